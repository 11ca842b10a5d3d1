"""mmsape.apis: one process runs segmentation, detection and classification
models in turn, and each gives what its toolbox's own API gives alone in a
fresh process."""
import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmsape.apis import config_scope, inference_model

from builders import ROOT

pytestmark = pytest.mark.e2e

IMAGES = {
    'seg': 'data/demo/ade/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg',
    'det': 'data/demo/coco/val2017/000001000001.jpg',
    'cls': 'data/demo/imagenet/val/green_disc/green_disc_00001.jpg',
}

# Prints {task: prediction} as JSON. 'mmsape' runs every job through mmsape.apis
# after another toolbox left its default scope current; 'toolbox' runs one job
# through the toolbox's own functions; 'toolboxes' runs every job through the
# toolboxes' own functions in one process, {job index: prediction}: first each
# model in turn (each init leaves its toolbox's scope current, mmpretrain's
# inferencer the previous one, and builds its pipeline there), then each
# prediction (in the scope the last init left).
SCRIPT = r'''
import json, sys
import torch
from mmengine.registry import init_default_scope


def summary(task, prediction):
    if task == 'det':
        instances = prediction.pred_instances
        return dict(bboxes=instances.bboxes.tolist(), scores=instances.scores.tolist(),
                    labels=instances.labels.tolist())
    if task == 'seg':
        return dict(label_map=prediction.pred_sem_seg.data[0].tolist())
    return dict(scores=prediction.pred_score.tolist())


mode, jobs = sys.argv[1], [job.split('|') for job in sys.argv[2:]]
results = {}
if mode == 'mmsape':
    from mmsape.apis import inference_model, init_model
    init_default_scope('mmpretrain')
    for task, config, checkpoint, image in jobs:
        model = init_model(config, checkpoint)
        results[task] = summary(task, inference_model(model, image))
elif mode == 'toolboxes':
    from mmdet.apis import inference_detector, init_detector
    from mmpretrain.apis import ImageClassificationInferencer
    from mmseg.apis import inference_model as inference_segmentor
    from mmseg.apis import init_model as init_segmentor
    models = []
    for task, config, checkpoint, image in jobs:
        if task == 'det':
            models.append(init_detector(config, checkpoint, device='cpu'))
        elif task == 'seg':
            models.append(init_segmentor(config, checkpoint, device='cpu'))
        else:
            models.append(ImageClassificationInferencer(config, pretrained=checkpoint,
                                                        device='cpu'))
    for index, ((task, config, checkpoint, image), model) in enumerate(zip(jobs, models)):
        if task == 'det':
            prediction = inference_detector(model, image)
        elif task == 'seg':
            prediction = inference_segmentor(model, image)
        else:
            prediction = model(image, return_datasamples=True)[0]
        results[str(index)] = summary(task, prediction)
else:
    (task, config, checkpoint, image), = jobs
    if task == 'det':
        from mmdet.apis import inference_detector, init_detector
        prediction = inference_detector(init_detector(config, checkpoint, device='cpu'), image)
    elif task == 'seg':
        from mmseg.apis import inference_model, init_model
        prediction = inference_model(init_model(config, checkpoint, device='cpu'), image)
    else:
        from mmpretrain.apis import ImageClassificationInferencer, init_model
        model = init_model(config, checkpoint, device='cpu')
        prediction = ImageClassificationInferencer(model)(image, return_datasamples=True)[0]
    results[task] = summary(task, prediction)
# own line: a toolbox may leave a progress bar without a line end on stdout
print('\nRESULTS ' + json.dumps(results))
'''


def predict(mode: str, jobs: list) -> dict:
    result = subprocess.run(
        [sys.executable, '-c', SCRIPT, mode, *('|'.join(map(str, job)) for job in jobs)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    if mode == 'mmsape':  # API calls print no progress bar (mmpretrain's inferencer does)
        assert 'Inference' not in result.stdout, result.stdout[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith('RESULTS '))
    return json.loads(line[len('RESULTS '):])


def test_tasks_in_turn_in_one_process_match_each_toolbox_alone(trained_demo):
    jobs = [(task, *trained_demo(task), IMAGES[task]) for task in ('seg', 'det', 'cls')]
    mixed = predict('mmsape', jobs)
    for job in jobs:
        task = job[0]
        alone = predict('toolbox', [job])[task]
        if task == 'seg':
            assert np.array_equal(mixed[task]['label_map'], alone['label_map'])
        elif task == 'det':
            assert len(alone['scores']) > 0
            assert mixed[task]['labels'] == alone['labels']
            np.testing.assert_allclose(mixed[task]['bboxes'], alone['bboxes'], atol=1e-3)
            np.testing.assert_allclose(mixed[task]['scores'], alone['scores'], atol=1e-5)
        else:
            np.testing.assert_allclose(mixed[task]['scores'], alone['scores'], atol=1e-6)


def assert_same_prediction(task: str, actual: dict, expected: dict) -> None:
    if task == 'seg':
        assert np.array_equal(actual['label_map'], expected['label_map'])
    elif task == 'det':
        assert len(expected['scores']) > 0
        assert actual['labels'] == expected['labels']
        np.testing.assert_allclose(actual['bboxes'], expected['bboxes'], atol=1e-3)
        np.testing.assert_allclose(actual['scores'], expected['scores'], atol=1e-5)
    else:
        np.testing.assert_allclose(actual['scores'], expected['scores'], atol=1e-6)


@pytest.fixture(scope='module')
def random_in1k_classifier(tmp_path_factory) -> tuple:
    """The ImageNet SaPE² classifier config and a checkpoint of random weights."""
    from mmsape.apis import init_model
    config = 'configs/vit_cls/vit-s16-sape2_4xb256-300e_in1k.py'
    torch.manual_seed(0)
    model = init_model(str(ROOT / config))
    path = tmp_path_factory.mktemp('in1k') / 'random.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return config, path


@pytest.mark.parametrize('order', [('seg', 'det', 'cls'), ('det', 'seg', 'cls')])
def test_toolboxes_own_apis_in_one_process(trained_demo, random_in1k_classifier, order):
    """mmpretrain's ImageClassificationInferencer after mmdet's init_detector
    (or mmseg's init_model) in one process, and mmdet's inference_detector /
    mmseg's inference_model after the other toolbox's init: every pipeline is
    built in another toolbox's scope, and each prediction is the one its
    toolbox gives alone in a fresh process."""
    jobs = [(task, *trained_demo(task), IMAGES[task]) for task in order]
    jobs.append(('cls', *random_in1k_classifier, IMAGES['cls']))
    mixed = predict('toolboxes', jobs)
    for index, job in enumerate(jobs):
        task = job[0]
        assert_same_prediction(task, mixed[str(index)], predict_alone(job))


@functools.lru_cache(maxsize=None)
def predict_alone(job: tuple) -> dict:
    """What the job's toolbox predicts in a fresh process (once per job)."""
    return predict('toolbox', [job])[job[0]]


def test_bad_configs_and_models_name_the_fix():
    assert config_scope(Config(dict(default_scope='mmseg'))) == 'mmseg'
    for scope in (None, 'mmsape', 'mmdet3d'):
        with pytest.raises(ValueError, match="default_runtime"):
            config_scope(Config(dict(default_scope=scope)))
    with pytest.raises(TypeError, match='init_model'):
        inference_model(torch.nn.Linear(2, 2), IMAGES['seg'])
