"""tools/infer.py draws each task's predictions on a demo image and on a
photograph of a size no config was trained at, and the drawings show them:
every drawing is opened and compared with the raw image, inside and outside
what the model predicted (computed here through mmsape.apis)."""
from pathlib import Path

import mmcv
import numpy as np
import pytest

from mmsape.apis import inference_model, init_model

from builders import ROOT, open_picture, run_tool

pytestmark = pytest.mark.e2e

DEMO_IMAGES = {
    'seg': 'data/demo/ade/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg',
    'det': 'data/demo/coco/val2017/000001000001.jpg',
    'cls': 'data/demo/imagenet/val/green_disc/green_disc_00001.jpg',
}


@pytest.fixture(scope='module')
def photo(tmp_path_factory) -> Path:
    """A 640 x 427 photograph (scikit-learn's sample), unlike any demo image."""
    from sklearn.datasets import load_sample_image
    path = tmp_path_factory.mktemp('photo') / 'china.jpg'
    mmcv.imwrite(load_sample_image('china.jpg')[..., ::-1], str(path))
    return path


def changed(drawing: np.ndarray, raw: np.ndarray, by: int = 10) -> np.ndarray:
    """Pixels that the drawing changed by more than ``by`` in some channel."""
    return np.abs(drawing.astype(int) - raw.astype(int)).max(-1) > by


def check_segmentation(drawing, raw, prediction, palette, opacity=0.5):
    """The drawing is the image blended with the colour of each pixel's
    predicted class (mmseg's visualizer), except where class names are written."""
    labels = prediction.pred_sem_seg.data[0].cpu().numpy()
    colours = np.asarray(palette, float)[labels]
    expected = raw * (1 - opacity) + colours * opacity
    assert (np.abs(drawing - expected).max(-1) <= 2).mean() > 0.95
    # where the class colour is far from the image, the drawing is too
    distinct = np.abs(colours - raw).max(-1) > 40
    assert distinct.sum() > 100
    assert changed(drawing, raw)[distinct].mean() > 0.95


def check_detection(drawing, raw, instances) -> int:
    """Box outlines, masks and labels where the drawn instances are; the
    image untouched elsewhere. Returns the number of pixels checked untouched
    (none where the boxes and labels cover the image)."""
    height, width = raw.shape[:2]
    near = np.zeros((height, width), bool)
    altered = changed(drawing, raw)
    for x1, y1, x2, y2 in instances.bboxes.round().int().tolist():
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = min(x2, width - 1), min(y2, height - 1)
        near[max(y1 - 4, 0):y2 + 5, max(x1 - 4, 0):x2 + 5] = True
        near[max(y1 - 4, 0):y1 + 30, max(x1 - 4, 0):] = True  # the label may overhang
        top_edge = altered[max(y1 - 2, 0):y1 + 3, x1:x2 + 1]
        left_edge = altered[y1:y2 + 1, max(x1 - 2, 0):x1 + 3]
        assert top_edge.mean() > 0.5 and left_edge.mean() > 0.5, 'a box is not drawn'
    if (~near).any():
        assert altered[~near].mean() < 0.005, 'the drawing changed the image away from the boxes'
    return int((~near).sum())


def check_classification(drawing, raw, min_size=256):
    """The image (enlarged so that its short side is ``min_size`` at least),
    with the classes written over its top left."""
    height, width = raw.shape[:2]
    if min(height, width) < min_size:
        size = (min_size, min_size * height // width) if width < height else (
            min_size * width // height, min_size)
        raw = mmcv.imresize(raw, size)
    assert drawing.shape == raw.shape
    altered = changed(drawing, raw)
    height, width = raw.shape[:2]
    assert altered[:height // 4, :width // 3].mean() > 0.05, 'no classes written'
    assert altered[height // 2:].mean() < 0.005, 'the image changed below the text'


@pytest.mark.parametrize('task', ['seg', 'det', 'cls'])
def test_infer_draws_predictions_on_any_image(task, trained_demo, photo, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config, checkpoint = trained_demo(task)
    images = tmp_path / 'images'
    images.mkdir()
    for source in (Path(DEMO_IMAGES[task]), photo):
        (images / source.name).write_bytes(source.read_bytes())
    model = init_model(config, str(checkpoint))
    predictions = {path.stem: inference_model(model, str(path)) for path in images.iterdir()}

    options = []
    if task == 'det':
        # draw the best-scored instances of each image: a threshold just under the
        # lower of the two images' best scores (the visualizer keeps scores above it)
        best = min(float(p.pred_instances.scores.max()) for p in predictions.values())
        score_thr = best - 1e-4
        options = ['--score-thr', repr(score_thr)]
    out_dir = tmp_path / 'drawings'
    output = run_tool('tools/infer.py', images, config, checkpoint, '--out-dir', out_dir,
                      *options).stdout

    untouched = 0
    for name, prediction in predictions.items():
        raw = mmcv.imread(str(next(images.glob(f'{name}.*'))), channel_order='rgb')
        if task == 'cls':
            drawing = open_picture(out_dir / f'{name}.png')
            check_classification(drawing, raw)
            top5 = prediction.pred_score.topk(5).indices.tolist()
            listed = ', '.join(f'{model._dataset_meta["classes"][i]} '
                               f'{float(prediction.pred_score[i]):.2f}' for i in top5)
            assert f'top classes: {listed}' in output
            continue
        drawing = open_picture(out_dir / f'{name}.png', size=(raw.shape[1], raw.shape[0]))
        if task == 'seg':
            check_segmentation(drawing, raw, prediction, model.dataset_meta['palette'])
        else:
            instances = prediction.pred_instances
            drawn = instances[instances.scores > score_thr]
            assert len(drawn) >= 1
            untouched += check_detection(drawing, raw, drawn)
    if task == 'det':
        assert untouched > 10000, 'the drawn boxes cover the images: nothing left to compare'
