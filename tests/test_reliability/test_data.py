"""Broken data with the real mmdet / mmseg / mmpretrain datasets and pipelines.

Each case either fails with an error naming the file and the reason, or is
skipped with a logged warning; never a hang or a silently wrong sample. The
``stock_*`` tests record what OpenMMLab does today (so a change upstream shows
up here); the others check :mod:`mmsape.datasets.transforms`, which covers the
cases where the stock behaviour is silent or names no file.
"""
import copy
import importlib
import json
import logging
from pathlib import Path

import mmcv
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmsape.datasets import (
    CheckedLoadImageFromFile,
    CheckSegLabelRange,
    DataFileError,
    check_coco_annotations,
)
from mmsape.testing.demo_data import generate_demo_data
from mmsape.utils.config_entries import find_entry_index

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    'mmdet': ('configs/demo/mask-rcnn_vit-96d4-p8-sape2_simplefpn_1xb4-800iter_demo-coco.py',
              'coco'),
    'mmseg': ('configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py',
              'ade/ADEChallengeData2016'),
    'mmpretrain': ('configs/demo/vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet.py', 'imagenet'),
}


@pytest.fixture(scope='module')
def pristine(tmp_path_factory) -> Path:
    return generate_demo_data(tmp_path_factory.mktemp('demo'), num_train=4, num_val=2)


@pytest.fixture
def demo(pristine, tmp_path) -> Path:
    """A private copy of the demo data that a test may break."""
    import shutil
    return Path(shutil.copytree(pristine, tmp_path / 'demo'))


def build_dataset(scope: str, demo: Path, checked_loading: bool = False, **changes):
    """The config's training dataset (real class and pipeline) on ``demo``."""
    config, subdir = CONFIGS[scope]
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    cfg = copy.deepcopy(Config.fromfile(str(ROOT / config)).train_dataloader.dataset)
    cfg.data_root = str(demo / subdir)
    if checked_loading:
        load = find_entry_index(cfg.pipeline, 'LoadImageFromFile')
        cfg.pipeline[load] = dict(type='mmsape.CheckedLoadImageFromFile',
                                  **{k: v for k, v in cfg.pipeline[load].items() if k != 'type'})
    cfg.update(changes)
    with DefaultScope.overwrite_default_scope(scope):
        return importlib.import_module(f'{scope}.registry').DATASETS.build(cfg)


def image_of(dataset, index: int) -> Path:
    return Path(dataset.get_data_info(index)['img_path'])


# ------------------------------------------------------------------ images
def test_stock_missing_image_names_the_file(demo):
    dataset = build_dataset('mmdet', demo)
    path = image_of(dataset, 0)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=str(path)):
        dataset[0]


CORRUPTIONS = {
    'empty': lambda data: b'',
    'garbage': lambda data: b'this is not a jpeg' * 20,
    'half': lambda data: data[:len(data) // 2],
    'last bytes lost': lambda data: data[:-16],
}


@pytest.mark.parametrize('scope', ['mmdet', 'mmpretrain'])
@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_corrupt_jpeg_is_reported_with_its_path(demo, scope, corruption):
    dataset = build_dataset(scope, demo, checked_loading=True)
    path = image_of(dataset, 1)
    path.write_bytes(CORRUPTIONS[corruption](path.read_bytes()))
    with pytest.raises(DataFileError, match=f'Cannot load image {str(path)!r}'):
        dataset[1]


def test_stock_loader_reports_corrupt_jpegs_with_a_bare_assert(demo):
    """Why CheckedLoadImageFromFile exists: mmcv's check is an ``assert``, which
    ``python -O`` removes."""
    dataset = build_dataset('mmpretrain', demo)
    path = image_of(dataset, 1)
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(AssertionError, match='failed to load image'):
        dataset[1]


def test_checked_loader_matches_stock_on_good_images(demo):
    from mmcv.transforms import LoadImageFromFile
    for path in sorted(demo.rglob('*.jpg'))[:6]:
        expected = LoadImageFromFile()(dict(img_path=str(path)))
        loaded = CheckedLoadImageFromFile()(dict(img_path=str(path)))
        np.testing.assert_array_equal(loaded['img'], expected['img'])
        assert loaded['img_shape'] == expected['img_shape']


def test_checked_loader_skips_with_a_warning_when_asked(demo, caplog):
    path = demo / 'broken.jpg'
    path.write_bytes(b'')
    loader = CheckedLoadImageFromFile(ignore_empty=True)
    with caplog.at_level(logging.WARNING, logger='mmengine'):
        assert loader(dict(img_path=str(path))) is None
    missing = CheckedLoadImageFromFile(ignore_empty=True)(dict(img_path=str(demo / 'nope.jpg')))
    assert missing is None
    with pytest.raises(FileNotFoundError, match='nope.jpg'):
        CheckedLoadImageFromFile()(dict(img_path=str(demo / 'nope.jpg')))


# ------------------------------------------------------------------ COCO annotations
def coco_file(demo: Path) -> Path:
    return demo / 'coco' / 'annotations' / 'instances_train2017.json'


def test_stock_coco_drops_unknown_category_silently(demo):
    path = coco_file(demo)
    coco = json.loads(path.read_text())
    before = sum(len(build_dataset('mmdet', demo).get_data_info(i)['instances'])
                 for i in range(4))
    coco['annotations'][0]['category_id'] = 99
    path.write_text(json.dumps(coco))
    dataset = build_dataset('mmdet', demo)
    after = sum(len(dataset.get_data_info(i)['instances']) for i in range(len(dataset)))
    assert after == before - 1  # one box gone, no message


def test_unknown_category_is_reported(demo):
    path = coco_file(demo)
    assert check_coco_annotations(path)['categories']
    coco = json.loads(path.read_text())
    coco['annotations'][2]['category_id'] = 99
    path.write_text(json.dumps(coco))
    with pytest.raises(DataFileError, match=rf"{path}.*annotation {coco['annotations'][2]['id']}"
                                            r' has category_id 99'):
        check_coco_annotations(path)


@pytest.mark.parametrize('content, reason', [('', 'is empty'), ('{"images": [', 'not valid JSON'),
                                             ('{"images": []}', 'lacks the list')])
def test_broken_coco_file_is_reported(demo, content, reason):
    path = coco_file(demo)
    path.write_text(content)
    with pytest.raises(DataFileError, match=f'{path}.*{reason}'):
        check_coco_annotations(path)
    if not content:  # stock: a JSONDecodeError without the file name
        with pytest.raises(ValueError) as error:
            build_dataset('mmdet', demo)
        assert str(path) not in str(error.value)


# ------------------------------------------------------------------ segmentation maps
def test_seg_label_out_of_range(demo):
    dataset = build_dataset('mmseg', demo)
    num_classes = len(dataset.metainfo['classes'])  # 4: maps hold 0..4, 0 -> 255
    assert num_classes == 4
    seg_path = dataset.get_data_info(0)['seg_map_path']
    seg = mmcv.imread(seg_path, flag='unchanged')
    seg[:4, :4] = 200
    mmcv.imwrite(seg, seg_path)
    # Stock: the value reaches the sample (as 199 after reduce_zero_label).
    stock = dataset[0]['data_samples'].gt_sem_seg.data
    assert (stock == 199).any()

    pipeline = copy.deepcopy(dataset.pipeline.transforms)
    checked = build_dataset('mmseg', demo)
    load_annotations = next(i for i, t in enumerate(pipeline)
                            if type(t).__name__ == 'LoadAnnotations')
    checked.pipeline.transforms.insert(load_annotations + 1, CheckSegLabelRange(num_classes))
    with pytest.raises(DataFileError, match=rf"{seg_path}.*\{{199: \d+\}}.*\[0, 4\)"):
        checked[0]
    # Every untouched map passes.
    for index in range(1, len(checked)):
        assert checked[index]['data_samples'].gt_sem_seg.data.max() <= 255


def test_seg_label_check_allows_classes_and_ignore_index():
    check = CheckSegLabelRange(num_classes=3, ignore_index=255)
    results = dict(gt_seg_map=np.array([[0, 1, 2, 255]], np.uint8), seg_map_path='a.png')
    assert check(results) is results
    with pytest.raises(DataFileError, match=r"'b.png'.*\{3: 1\}"):
        check(dict(gt_seg_map=np.array([[0, 3, 255]], np.uint8), seg_map_path='b.png'))
    with pytest.raises(ValueError, match='num_classes'):
        CheckSegLabelRange(num_classes=0)
