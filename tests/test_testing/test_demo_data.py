"""Tests of the synthetic demo datasets: formats, determinism and label design."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from PIL import Image

from mmsape.testing.demo_data import (
    DEMO_CLS_CLASSES,
    DEMO_DET_CLASSES,
    DEMO_SEG_CLASSES,
    MANIFEST_NAME,
    SEG_LOWER,
    SEG_UPPER,
    classification_layout_label,
    detection_disc_label,
    ensure_demo_data,
    generate_demo_data,
    generator,
    is_demo_data_current,
    sample_classification_shapes,
    sample_detection_shapes,
    sample_segmentation_shapes,
    segmentation_pair_labels,
)
from mmsape.testing.demo_data import shapes as demo_shapes

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLITS = ('train', 'val')
ADE_FOLDERS = {'train': 'training', 'val': 'validation'}
# Max minus min RGB channel: object colours are far above, backgrounds far below.
SATURATION_THRESHOLD = 90


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    return generate_demo_data(tmp_path_factory.mktemp('demo') / 'demo', seed=0)


def read_tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file() and not p.name.startswith('.')}


def load_coco(root: Path, split: str) -> dict:
    return json.loads((root / 'coco' / 'annotations' / f'instances_{split}2017.json').read_text())


def saturation(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.int32)
    return image.max(axis=2) - image.min(axis=2)


def object_mask(path: Path) -> np.ndarray:
    """Pixels of the (saturated) objects of a saved demo image."""
    return saturation(np.asarray(Image.open(path).convert('RGB'))) > SATURATION_THRESHOLD


def pixel_layout_class(mask: np.ndarray, pair: bool) -> str:
    """Layout class read off the pixels alone, independent of the generator's code."""
    ys, xs = np.nonzero(mask)
    if pair:
        x_extent, y_extent = xs.max() - xs.min(), ys.max() - ys.min()
        return 'pair_horizontal' if x_extent > y_extent else 'pair_vertical'
    return 'spot_top' if ys.mean() < mask.shape[0] / 2 else 'spot_bottom'


# --------------------------------------------------------------------------- #
# Determinism and generation bookkeeping.
# --------------------------------------------------------------------------- #
def test_same_seed_gives_identical_bytes(demo_root, tmp_path):
    again = read_tree(generate_demo_data(tmp_path / 'again', seed=0))
    first = read_tree(demo_root)
    assert sorted(again) == sorted(first)
    assert [name for name in first if first[name] != again[name]] == []
    images = 48 + 16
    # manifest + imagenet (images, 3 meta files) + coco (images, 2 json) + ade (jpg,
    # png, classes.txt)
    assert len(first) == 1 + (images + 3) + (images + 2) + (2 * images + 1)


def test_other_seed_gives_other_images(demo_root, tmp_path):
    other = read_tree(generate_demo_data(tmp_path / 'other', seed=1, num_train=6, num_val=2))
    first = read_tree(demo_root)
    jpgs = [name for name in other if name.endswith('.jpg')]
    assert len(jpgs) == 3 * (6 + 2)
    assert all(first[name] != other[name] for name in jpgs)


def test_images_do_not_depend_on_counts(demo_root, tmp_path):
    # Per-image seeding: a smaller run reproduces the first images of a larger one.
    small = read_tree(generate_demo_data(tmp_path / 'small', seed=0, num_train=7, num_val=3))
    full = read_tree(demo_root)
    images = [name for name in small if name.endswith(('.jpg', '.png'))]
    assert len(images) == 3 * (7 + 3) + 7 + 3
    assert all(small[name] == full[name] for name in images)


def test_manifest_and_ensure(tmp_path, monkeypatch):
    root = tmp_path / 'demo'
    (root / 'unrelated').mkdir(parents=True)
    assert not is_demo_data_current(root)
    ensure_demo_data(root, seed=3, num_train=4, num_val=2)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest['complete'] and manifest['seed'] == 3
    assert manifest['version'] == generator.GENERATOR_VERSION
    assert manifest['tasks']['coco']['num_images'] == {'train': 4, 'val': 2}
    assert is_demo_data_current(root, seed=3, num_train=4, num_val=2)
    assert not is_demo_data_current(root, seed=0, num_train=4, num_val=2)

    # Up to date: nothing is regenerated.
    def fail(*args, **kwargs):
        raise AssertionError('regenerated up-to-date demo data')

    with monkeypatch.context() as patch:
        patch.setattr(generator, '_generate', fail)
        assert ensure_demo_data(root, seed=3, num_train=4, num_val=2) == root

    # Another seed or count regenerates, dropping files of the old run.
    ensure_demo_data(root, seed=3, num_train=3, num_val=2)
    assert not (root / 'imagenet' / 'train' / DEMO_CLS_CLASSES[3]).exists()
    assert json.loads((root / MANIFEST_NAME).read_text())['num_train'] == 3

    # An interrupted run (manifest still incomplete) is regenerated too.
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(json.dumps(dict(manifest, complete=False)))
    assert not is_demo_data_current(root, seed=3, num_train=3, num_val=2)
    ensure_demo_data(root, seed=3, num_train=3, num_val=2)
    assert is_demo_data_current(root, seed=3, num_train=3, num_val=2)
    assert (root / 'unrelated').is_dir()


def test_foreign_data_is_not_overwritten(tmp_path):
    root = tmp_path / 'data'
    real = root / 'coco' / 'annotations' / 'instances_train2017.json'
    real.parent.mkdir(parents=True)
    real.write_text('{"real": true}')
    with pytest.raises(FileExistsError):
        ensure_demo_data(root, num_train=2, num_val=1)
    assert real.read_text() == '{"real": true}'
    generate_demo_data(root, num_train=2, num_val=1, force=True)
    assert 'real' not in real.read_text()


def test_cli(tmp_path):
    out = tmp_path / 'cli'
    cmd = [sys.executable, str(REPO_ROOT / 'tools' / 'misc' / 'generate_demo_data.py'),
           '--out', str(out), '--seed', '2', '--num-train', '6', '--num-val', '2']
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert is_demo_data_current(out, seed=2, num_train=6, num_val=2)
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and 'up to date' in result.stdout


# --------------------------------------------------------------------------- #
# On-disk formats.
# --------------------------------------------------------------------------- #
def all_jpegs(root: Path):
    return sorted(root.rglob('*.jpg'))


def test_image_sizes_are_varied_and_non_square(demo_root):
    sizes = [Image.open(path).size for path in all_jpegs(demo_root)]
    assert len(sizes) == 3 * (48 + 16)
    for width, height in sizes:
        assert width != height
        assert 0.5 <= width / height <= 2.0
        assert demo_shapes.MIN_SIDE <= min(width, height)
        assert max(width, height) <= demo_shapes.MAX_SIDE
    assert len(set(sizes)) > len(sizes) // 2
    assert sum(w > h for w, h in sizes) > len(sizes) // 4  # both orientations
    assert sum(h > w for w, h in sizes) > len(sizes) // 4
    assert sum(w % 16 != 0 or h % 16 != 0 for w, h in sizes) > len(sizes) // 2


def test_imagenet_layout(demo_root):
    imagenet = demo_root / 'imagenet'
    for split, count in (('train', 48), ('val', 16)):
        folders = sorted(p.name for p in (imagenet / split).iterdir())
        # CustomDataset numbers sorted folders: that order must be DEMO_CLS_CLASSES.
        assert tuple(folders) == DEMO_CLS_CLASSES
        per_class = [len(list((imagenet / split / c).glob('*.jpg'))) for c in folders]
        assert min(per_class) >= 1 and sum(per_class) == count
        lines = (imagenet / 'meta' / f'{split}.txt').read_text().split('\n')[:-1]
        assert len(lines) == count
        for line in lines:
            relative, label = line.rsplit(' ', 1)
            assert (imagenet / split / relative).is_file()
            assert DEMO_CLS_CLASSES[int(label)] == relative.split('/')[0]
    classes = (imagenet / 'meta' / 'classes.txt').read_text().split()
    assert tuple(classes) == DEMO_CLS_CLASSES


def check_polygon_annotation(ann: dict, width: int, height: int) -> None:
    assert ann['iscrowd'] == 0
    assert isinstance(ann['segmentation'], list) and len(ann['segmentation']) == 1
    polygon = ann['segmentation'][0]
    assert len(polygon) >= 6 and len(polygon) % 2 == 0
    assert all(isinstance(v, float) for v in polygon)
    xs, ys = np.array(polygon[0::2]), np.array(polygon[1::2])
    x, y, w, h = ann['bbox']
    assert w > 0 and h > 0
    assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
    np.testing.assert_allclose([x, y, x + w, y + h],
                               [xs.min(), ys.min(), xs.max(), ys.max()], atol=0.011)
    assert 0 < ann['area'] <= w * h + 0.05  # + rounding to 2 decimals


def test_coco_format(demo_root):
    image_ids, ann_ids = set(), set()
    for split, count in (('train', 48), ('val', 16)):
        coco = load_coco(demo_root, split)
        assert [(c['id'], c['name']) for c in coco['categories']] == \
            list(enumerate(DEMO_DET_CLASSES, start=1))
        assert all(c['supercategory'] for c in coco['categories'])
        assert len(coco['images']) == count
        images = {img['id']: img for img in coco['images']}
        for img in coco['images']:
            with Image.open(demo_root / 'coco' / f'{split}2017' / img['file_name']) as im:
                assert im.size == (img['width'], img['height']) and im.mode == 'RGB'
        for ann in coco['annotations']:
            img = images[ann['image_id']]
            assert 1 <= ann['category_id'] <= len(DEMO_DET_CLASSES)
            check_polygon_annotation(ann, img['width'], img['height'])
        # Every image has objects (mmdet's filter_empty_gt would drop it otherwise).
        assert {ann['image_id'] for ann in coco['annotations']} == set(images)
        assert image_ids.isdisjoint(images)
        assert ann_ids.isdisjoint(ann['id'] for ann in coco['annotations'])
        image_ids |= set(images)
        ann_ids |= {ann['id'] for ann in coco['annotations']}
        used = {ann['category_id'] for ann in coco['annotations']}
        assert used == set(range(1, len(DEMO_DET_CLASSES) + 1))


def test_coco_loads_with_pycocotools(demo_root):
    coco_api = pytest.importorskip('pycocotools.coco')
    for split in SPLITS:
        coco = coco_api.COCO(
            str(demo_root / 'coco' / 'annotations' / f'instances_{split}2017.json'))
        # mmdet's CocoDataset asks for category ids by name, in this order.
        assert coco.getCatIds(catNms=list(DEMO_DET_CLASSES)) == [1, 2, 3, 4]
        for ann in coco.loadAnns(coco.getAnnIds()):
            mask = coco.annToMask(ann)
            assert mask.shape == (coco.imgs[ann['image_id']]['height'],
                                  coco.imgs[ann['image_id']]['width'])
            assert mask.sum() > 0


def test_ade_layout_and_label_maps(demo_root):
    ade = demo_root / 'ade' / 'ADEChallengeData2016'
    num_classes = len(DEMO_SEG_CLASSES)
    assert tuple((demo_root / 'ade' / 'classes.txt').read_text().split()) == DEMO_SEG_CLASSES
    assert len(demo_shapes.DEMO_SEG_PALETTE) == num_classes
    for split, count in (('train', 48), ('val', 16)):
        images = sorted((ade / 'images' / ADE_FOLDERS[split]).glob('*.jpg'))
        labels = sorted((ade / 'annotations' / ADE_FOLDERS[split]).glob('*.png'))
        assert len(images) == len(labels) == count
        assert [p.stem for p in images] == [p.stem for p in labels]
        assert images[0].name == f'ADE_{split}_00000001.jpg'
        for image_path, label_path in zip(images, labels):
            with Image.open(label_path) as label_image:
                assert label_image.mode == 'L'  # single channel, not a palette PNG
                label = np.asarray(label_image)
            assert label.dtype == np.uint8 and label.ndim == 2
            with Image.open(image_path) as image:
                assert image.size == (label.shape[1], label.shape[0])
            values = set(np.unique(label).tolist())
            assert values <= set(range(num_classes + 1))
            # Background, both pair members and the ignored boundary ring are
            # in every map; green blobs only where they fit.
            assert {0, 1, SEG_UPPER, SEG_LOWER} <= values
            assert (label == 0).mean() < 0.3


# --------------------------------------------------------------------------- #
# Label design: layout classes depend on layout, and only on layout.
# --------------------------------------------------------------------------- #
SWAPPED_BY_TRANSPOSE = {'pair_horizontal': 'pair_vertical', 'pair_vertical': 'pair_horizontal'}
SWAPPED_BY_VFLIP = {'spot_top': 'spot_bottom', 'spot_bottom': 'spot_top'}


@pytest.mark.parametrize('class_name', ['pair_horizontal', 'pair_vertical', 'spot_top',
                                        'spot_bottom'])
def test_classification_rule_follows_layout(class_name):
    for index in range(50):
        rng = np.random.default_rng(index)
        width, height = demo_shapes.sample_image_size(rng)
        shapes = sample_classification_shapes(rng, class_name, width, height)
        centers = [s.center for s in shapes]
        assert classification_layout_label(centers, height) == class_name
        # Horizontal flips keep every label (RandomFlip stays valid) ...
        hflipped = [s.hflipped(width).center for s in shapes]
        assert classification_layout_label(hflipped, height) == class_name
        # ... a transpose turns a horizontal pair into a vertical one and back ...
        if class_name in SWAPPED_BY_TRANSPOSE:
            transposed = [s.transposed().center for s in shapes]
            assert classification_layout_label(transposed, width) == \
                SWAPPED_BY_TRANSPOSE[class_name]
        # ... and a vertical flip moves a spot to the other half.
        vflipped = [s.vflipped(height).center for s in shapes]
        expected = SWAPPED_BY_VFLIP.get(class_name, class_name)
        assert classification_layout_label(vflipped, height) == expected
        for shape in shapes:  # blobs lie fully inside the image
            x0, y0, x1, y1 = shape.bbox_xyxy
            assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height


@pytest.mark.parametrize('class_name,partner,mirror', [
    ('pair_horizontal', 'pair_vertical', 'transpose'),
    ('spot_top', 'spot_bottom', 'vflip'),
])
def test_layout_classes_differ_only_in_layout(class_name, partner, mirror):
    # With the same randomness, the partner class is the mirrored sample: same
    # colours, shapes and sizes, so nothing but position separates the classes.
    for index in range(20):
        width, height = 90 + index, 60 + 2 * index
        shapes = sample_classification_shapes(np.random.default_rng(index), class_name,
                                              width, height)
        if mirror == 'transpose':
            mirrored = [s.transposed() for s in shapes]
            partner_shapes = sample_classification_shapes(np.random.default_rng(index),
                                                          partner, height, width)
        else:
            mirrored = [s.vflipped(height) for s in shapes]
            partner_shapes = sample_classification_shapes(np.random.default_rng(index),
                                                          partner, width, height)
        assert len(mirrored) == len(partner_shapes)
        for a, b in zip(mirrored, partner_shapes):
            assert a.color == b.color and a.kind == b.kind and b.label == partner
            np.testing.assert_allclose(a.polygon, b.polygon, atol=1e-9)


def test_saved_classification_images_follow_layout(demo_root):
    # Read the class off the saved JPEG pixels, without the generator's code.
    checked = 0
    for split in SPLITS:
        for class_name in ('pair_horizontal', 'pair_vertical', 'spot_top', 'spot_bottom'):
            pair = class_name.startswith('pair')
            for path in sorted((demo_root / 'imagenet' / split / class_name).glob('*.jpg')):
                mask = object_mask(path)
                assert 0 < mask.mean() < 0.5  # objects found, background not taken
                assert pixel_layout_class(mask, pair) == class_name
                if pair:
                    assert pixel_layout_class(mask.T, pair) == SWAPPED_BY_TRANSPOSE[class_name]
                else:
                    assert pixel_layout_class(mask[::-1], pair) == SWAPPED_BY_VFLIP[class_name]
                assert pixel_layout_class(mask[:, ::-1], pair) == class_name
                checked += 1
    assert checked >= 4 * (48 + 16) // len(DEMO_CLS_CLASSES)


def box_color(image: np.ndarray, bbox) -> np.ndarray:
    """Mean colour of the central third of a box (inside the object, away from edges)."""
    x, y, w, h = bbox
    x0, x1 = int(x + w / 3), int(np.ceil(x + 2 * w / 3))
    y0, y1 = int(y + h / 3), int(np.ceil(y + 2 * h / 3))
    return image[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


def test_detection_disc_category_follows_position(demo_root):
    top, bottom = DEMO_DET_CLASSES.index('top_disc') + 1, DEMO_DET_CLASSES.index(
        'bottom_disc') + 1
    images_with_both = 0
    for split in SPLITS:
        coco = load_coco(demo_root, split)
        for img in coco['images']:
            anns = [a for a in coco['annotations'] if a['image_id'] == img['id']]
            discs = [a for a in anns if a['category_id'] in (top, bottom)]
            for ann in discs:
                x, y, w, h = ann['bbox']
                name = DEMO_DET_CLASSES[ann['category_id'] - 1]
                assert detection_disc_label(y + h / 2, img['height']) == name
                # Entirely inside its half: no disc straddles the midline.
                assert (y + h <= img['height'] / 2) if name == 'top_disc' else \
                    (y >= img['height'] / 2)
                # A vertical flip of the image moves it to the other category.
                flipped = detection_disc_label(img['height'] - (y + h / 2), img['height'])
                assert flipped != name
            if {a['category_id'] for a in discs} == {top, bottom}:
                images_with_both += 1
                with Image.open(demo_root / 'coco' / f'{split}2017' / img['file_name']) as im:
                    pixels = np.asarray(im.convert('RGB'), dtype=np.float64)
                colors = [box_color(pixels, a['bbox']) for a in discs]
                # Same colour for top and bottom discs: only position tells them apart.
                assert np.ptp(np.stack(colors), axis=0).max() < 20
    assert images_with_both >= 5


def test_detection_and_segmentation_rules_flip():
    for index in range(30):
        rng = np.random.default_rng(index)
        width, height = demo_shapes.sample_image_size(rng)
        for shape in sample_detection_shapes(rng, width, height):
            if shape.label in ('top_disc', 'bottom_disc'):
                flipped = shape.vflipped(height)
                assert detection_disc_label(shape.center[1], height) == shape.label
                assert detection_disc_label(flipped.center[1], height) != shape.label
                assert detection_disc_label(shape.hflipped(width).center[1],
                                            height) == shape.label
        upper, lower = sample_segmentation_shapes(rng, width, height)[:2]
        assert (upper.label, lower.label) in (('upper_blob', 'lower_blob'),
                                              ('lower_blob', 'upper_blob'))
        a, b = upper.center[1], lower.center[1]
        assert segmentation_pair_labels(a, b) == segmentation_pair_labels(b, a)[::-1]
        assert segmentation_pair_labels(height - a, height - b) == \
            segmentation_pair_labels(b, a)


def region_stats(label: np.ndarray, value: int) -> Tuple[float, np.ndarray]:
    ys, _ = np.nonzero(label == value)
    return float(ys.mean()), label == value


def test_segmentation_pair_labels_are_relative(demo_root):
    ade = demo_root / 'ade' / 'ADEChallengeData2016'
    same_half = 0
    for split in SPLITS:
        for label_path in sorted((ade / 'annotations' / ADE_FOLDERS[split]).glob('*.png')):
            label = np.asarray(Image.open(label_path))
            image_path = ade / 'images' / ADE_FOLDERS[split] / (label_path.stem + '.jpg')
            image = np.asarray(Image.open(image_path).convert('RGB'), dtype=np.float64)
            upper_y, upper_mask = region_stats(label, SEG_UPPER)
            lower_y, lower_mask = region_stats(label, SEG_LOWER)
            assert upper_y < lower_y
            # Flipped upside down, the label rule names the members the other way.
            height = label.shape[0]
            assert segmentation_pair_labels(height - upper_y, height - lower_y) == \
                (SEG_LOWER, SEG_UPPER)
            # Both members look alike: colour cannot separate the two classes.
            upper_color = image[upper_mask].mean(axis=0)
            lower_color = image[lower_mask].mean(axis=0)
            assert np.abs(upper_color - lower_color).max() < 20
            # Same size up to rasterising a sub-pixel position (a row / column).
            sizes = upper_mask.sum(), lower_mask.sum()
            assert min(sizes) >= 0.75 * max(sizes)
            same_half += (upper_y < height / 2) == (lower_y < height / 2)
    # Some pairs sit in a single half: absolute position cannot explain the labels.
    assert same_half >= 5
