"""mmsape.analysis.browse_dataset (tools/misc/browse_dataset.py): the training
samples, after the training pipeline, drawn with their labels by the toolbox's
visualizer, for the three tasks' demo configs and the full Mask R-CNN config on
the generated COCO layout."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from mmsape.analysis import browse_dataset
from mmsape.apis import MissingDataError
from mmsape.testing.demo_data import DEMO_CLS_CLASSES, DEMO_DET_CLASSES, ensure_demo_data

from builders import DEMO_CONFIGS, ROOT, readme_command


@pytest.fixture(scope='module')
def demo_root() -> Path:
    return ensure_demo_data(ROOT / 'data' / 'demo')


def drawing(path: str) -> np.ndarray:
    with Image.open(path) as picture:
        picture.load()
        return np.asarray(picture.convert('RGB'))


@pytest.mark.parametrize('task', sorted(DEMO_CONFIGS))
def test_training_samples_are_drawn(task, demo_root, tmp_path):
    written = browse_dataset(str(ROOT / DEMO_CONFIGS[task]), str(tmp_path), max_samples=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(p).name for p in written]
    first_image = {'det': '000000000001', 'seg': 'ADE_train_00000001',
                   'cls': f'{DEMO_CLS_CLASSES[0]}_00000'}[task]
    assert Path(written[0]).name == f'00000_{first_image}.png'
    assert len(written) == 3
    for path in written:
        image = drawing(path)
        assert image.ndim == 3 and image.std() > 0
    if task == 'cls':  # small images upsized so that the class name fits
        assert min(drawing(written[0]).shape[:2]) == 224


def seed(value: int = 0) -> None:
    """The random state the pipelines' augmentations draw from."""
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def drawn_and_pipeline_output(config: str, out_dir: Path):
    """The drawing of the config's first training sample, and that sample after
    the training pipeline (the RGB image and its data sample), both made from
    the same random state."""
    from mmengine.registry import DATASETS, DefaultScope

    from mmsape.utils import prepare_scope
    seed()
    written = browse_dataset(str(ROOT / config), str(out_dir), max_samples=1)
    cfg = Config.fromfile(str(ROOT / config))
    scope = prepare_scope(cfg)
    seed()
    with DefaultScope.overwrite_default_scope(scope):
        sample = DATASETS.build(cfg.train_dataloader.dataset)[0]
    image = sample['inputs'].permute(1, 2, 0).numpy()[..., ::-1]
    return drawing(written[0]), image, sample['data_samples']


def test_detection_drawings_mark_the_objects(demo_root, tmp_path):
    """The drawing changes the pixels of each annotated object (mask, box,
    class name) and leaves the rest of the augmented image as it is."""
    drawn, image, data_sample = drawn_and_pipeline_output(DEMO_CONFIGS['det'], tmp_path)
    assert drawn.shape == image.shape
    changed = np.abs(drawn.astype(int) - image.astype(int)).max(-1) > 20
    near_objects = np.zeros(changed.shape, bool)
    boxes = data_sample.gt_instances.bboxes.tensor.round().int().tolist()
    assert boxes
    for x1, y1, x2, y2 in boxes:
        assert changed[y1:y2, x1:x2].mean() > 0.3, 'an object is not drawn'
        # the class name is written from the box's corner outwards
        near_objects[max(y1 - 12, 0):y2 + 3, max(x1 - 3, 0):x2 + 60] = True
    assert changed[~near_objects].mean() < 0.02


def test_segmentation_drawings_colour_each_labelled_region(demo_root, tmp_path):
    """SegLocalVisualizer blends each class's palette colour over its region
    of the augmented label map: every class shows its colour in the drawing."""
    drawn, image, data_sample = drawn_and_pipeline_output(DEMO_CONFIGS['seg'], tmp_path)
    labels = data_sample.gt_sem_seg.data[0].numpy()
    assert drawn.shape == image.shape and labels.shape == image.shape[:2]
    palette = Config.fromfile(str(ROOT / DEMO_CONFIGS['seg'])).palette
    present = [label for label in np.unique(labels) if label < len(palette)]
    assert len(present) >= 3
    for label in present:
        region = labels == label
        colour = np.array(palette[label], float)
        before = np.abs(image[region].astype(float) - colour).mean()
        after = np.abs(drawn[region].astype(float) - colour).mean()
        assert after < 0.6 * before, f'class {label} is not coloured'


def test_full_coco_config_through_the_documented_override(demo_root, tmp_path):
    """The Mask R-CNN recipe's large-scale jitter (1024 x 1024 crops of images
    rescaled by 0.1-2.0) on the generated COCO layout, reached with the README's
    --cfg-options (the generated set's four categories standing in for COCO's 80,
    which mmdet's CocoDataset would otherwise filter every image out for)."""
    words = readme_command('COCO: detection and instance segmentation', 'tools/train.py',
                           COCO=str(demo_root / 'coco'))
    options = dict(option.split('=', 1) for option in words[words.index('--cfg-options') + 1:])
    options['train_dataloader.dataset.dataset.metainfo'] = dict(classes=DEMO_DET_CLASSES)
    written = browse_dataset(str(ROOT / words[2]), str(tmp_path), max_samples=2,
                             cfg_options=options)
    assert len(written) == 2
    for path in written:
        assert max(drawing(path).shape[:2]) <= 1024


def test_missing_data_and_nothing_to_do_are_named(tmp_path):
    with pytest.raises(MissingDataError, match='train_dataloader.dataset .*data_root'):
        browse_dataset(str(ROOT / DEMO_CONFIGS['seg']), str(tmp_path), cfg_options={
            'train_dataloader.dataset.data_root': str(tmp_path / 'nowhere')})
    with pytest.raises(ValueError, match='nothing to do'):
        browse_dataset(str(ROOT / DEMO_CONFIGS['seg']))
    with pytest.raises(ValueError, match='has no train_dataloader to draw'):
        browse_dataset(str(ROOT / DEMO_CONFIGS['seg']), str(tmp_path),
                       cfg_options={'train_dataloader': None})
