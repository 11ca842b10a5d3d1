"""tools/test.py has mmdet's and mmseg's options: ``--show-dir`` draws every test
image (prediction next to ground truth) through the toolbox's visualization
hook, ``--out`` dumps the predictions to a pickle, ``--tta`` tests the
config's ``tta_model``, ``--metrics-out`` writes the metrics. The drawings are
opened and checked against the annotation files and the dumped predictions."""
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import mmcv
import numpy as np
import pytest

from mmsape.apis import inference_model, init_model

from builders import ROOT, open_picture, run_tool

pytestmark = pytest.mark.e2e

#: --cfg-options that test on the first validation images only
FIRST_IMAGES = 'test_dataloader.dataset.indices={}'


def run_test_tool(config, checkpoint, *options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/test.py', config, str(checkpoint), *options],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def blend(image: np.ndarray, labels: np.ndarray, palette, alpha: float) -> np.ndarray:
    """mmseg's drawing of a label map: the image blended with each class's
    colour (black where the label is no class, e.g. 255)."""
    colours = np.zeros(labels.shape + (3, ))
    for label, colour in enumerate(palette):
        colours[labels == label] = colour
    return image * (1 - alpha) + colours * alpha


def test_segmentation_drawings_dump_and_metrics(trained_demo, tmp_path):
    config, checkpoint = trained_demo('seg')
    show_dir, dump, metrics = tmp_path / 'drawings', tmp_path / 'preds.pkl', tmp_path / 'm.json'
    output = run_tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path,
                      '--show-dir', show_dir, '--out', dump, '--metrics-out', metrics,
                      '--cfg-options', FIRST_IMAGES.format(4)).stdout
    assert math.isfinite(json.loads(metrics.read_text())['mIoU'])
    assert f'4 drawings in {show_dir}' in output
    predictions = pickle.loads(dump.read_bytes())
    assert len(predictions) == 4
    palette = [[120, 120, 120], [0, 200, 0], [220, 20, 60], [30, 144, 255]]
    for prediction in predictions:
        name = Path(prediction['img_path']).name
        # mmseg's hook saves through the visualizer: <dir>/vis_data/vis_image/test_<name>_0.png
        drawing_file, = show_dir.rglob(f'test_{name}_*.png')
        raw = mmcv.imread(prediction['img_path'], channel_order='rgb').astype(float)
        height, width = raw.shape[:2]
        drawing = open_picture(drawing_file, size=(2 * width, height)).astype(float)
        # ground truth on the left, from the annotation file (labels shifted
        # down by one, 0 -> 255, as reduce_zero_label does); prediction right
        annotation = mmcv.imread(prediction['seg_map_path'], flag='unchanged').astype(int) - 1
        annotation[annotation < 0] = 255
        predicted = prediction['pred_sem_seg']['data'][0].numpy()
        # SegLocalVisualizer's default alpha; the rest of the pixels carry class names
        for half, labels in ((drawing[:, :width], annotation), (drawing[:, width:], predicted)):
            expected = blend(raw, labels, palette, alpha=0.8)
            assert (np.abs(half - expected).max(-1) <= 2).mean() > 0.9


def test_segmentation_tta_averages_the_flips(trained_demo, tmp_path, monkeypatch):
    config, checkpoint = trained_demo('seg')
    dump = tmp_path / 'tta.pkl'
    run_tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path, '--tta',
             '--out', dump, '--cfg-options', FIRST_IMAGES.format(1))
    tta, = pickle.loads(dump.read_bytes())
    # the reference: the model on the image and on its mirror image, the
    # mirrored class probabilities flipped back and averaged
    monkeypatch.chdir(ROOT)
    model = init_model(config, str(checkpoint))
    image = mmcv.imread(tta['img_path'])
    plain = inference_model(model, image).seg_logits.data
    mirrored = inference_model(model, image[:, ::-1].copy()).seg_logits.data.flip(-1)
    expected = (plain.softmax(0) + mirrored.softmax(0)).argmax(0)
    assert (tta['pred_sem_seg']['data'][0] == expected).float().mean() > 0.99
    # SegTTAModel returns its last view's sample, the mirrored one (logits
    # flipped back), with the merged prediction; the views differ
    logits = tta['seg_logits']['data']
    assert (logits - mirrored).abs().mean() < 1e-3
    assert (plain - mirrored).abs().mean() > 1e-2


def box_regions(shape, boxes, margin=4, label_height=30) -> np.ndarray:
    """Pixels near the boxes, with a band right of each box's top left for its label."""
    near = np.zeros(shape, bool)
    for x1, y1, x2, y2 in np.asarray(boxes, float).round().astype(int):
        x1, y1 = max(x1, 0), max(y1, 0)
        near[max(y1 - margin, 0):y2 + margin + 1, max(x1 - margin, 0):x2 + margin + 1] = True
        near[max(y1 - margin, 0):y1 + label_height, max(x1 - margin, 0):] = True
    return near


def test_detection_drawings_and_dump(trained_demo, demo_data, tmp_path):
    config, checkpoint = trained_demo('det')
    show_dir, dump = tmp_path / 'drawings', tmp_path / 'preds.pkl'
    run_tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path, '--show-dir', show_dir,
             '--out', dump, '--cfg-options', FIRST_IMAGES.format(4))
    predictions = pickle.loads(dump.read_bytes())
    assert len(predictions) == 4 and len(list(show_dir.iterdir())) == 4
    annotations = json.loads(
        (demo_data / 'coco' / 'annotations' / 'instances_val2017.json').read_text())
    for prediction in predictions:
        # DetVisualizationHook writes <dir>/<image file name>: JPEG, so with a tolerance
        path = Path(prediction['img_path'])
        raw = mmcv.imread(str(path), channel_order='rgb').astype(int)
        height, width = raw.shape[:2]
        drawing = open_picture(show_dir / path.name, size=(2 * width, height), png=False)
        gt_boxes = [(x, y, x + w, y + h) for x, y, w, h in
                    (a['bbox'] for a in annotations['annotations']
                     if a['image_id'] == prediction['img_id'])]
        instances = prediction['pred_instances']
        drawn = instances['bboxes'][instances['scores'] > 0.3]  # the hook's score_thr
        for half, boxes in ((drawing[:, :width], gt_boxes), (drawing[:, width:], drawn)):
            difference = np.abs(half.astype(int) - raw).max(-1)
            near = box_regions((height, width), boxes)
            assert (difference[~near] > 40).mean() < 0.01, 'drawn away from the boxes'
            for x1, y1, x2, _ in np.asarray(boxes, float).round().astype(int):
                edge = difference[max(y1 - 1, 0):y1 + 2, max(x1, 0):x2 + 1]
                assert (edge > 40).mean() > 0.5, 'a box edge is not drawn'
        assert gt_boxes, 'every demo image has objects'


def test_classification_drawings(trained_demo, tmp_path):
    config, checkpoint = trained_demo('cls')
    show_dir = tmp_path / 'drawings'
    run_tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path, '--show-dir', show_dir,
             '--cfg-options', FIRST_IMAGES.format(4))
    drawings = sorted(show_dir.iterdir())
    assert len(drawings) == 4
    for drawing_file in drawings:
        # mmpretrain's hook draws the network input: the image resized to a short side
        # of 64 (ResizeEdge), its channels in loading order (BGR: compared per
        # pixel in sorted order), with the labels written at the top left
        name = drawing_file.name.rsplit('_', 1)[0]
        raw, = (ROOT / 'data' / 'demo' / 'imagenet' / 'val').rglob(name)
        raw = mmcv.imread(str(raw))
        height, width = raw.shape[:2]
        size = (64, int(64 * height / width)) if width < height else (
            int(64 * width / height), 64)
        drawing = open_picture(drawing_file, size=size).astype(int)
        resized = mmcv.imresize(raw, size).astype(int)
        difference = np.abs(np.sort(drawing, -1) - np.sort(resized, -1)).max(-1)
        assert (difference[size[1] // 2:] > 10).mean() < 0.01
        assert (difference[:size[1] // 3, :size[0] // 2] > 10).mean() > 0.05


def test_bad_options_name_the_fix(trained_demo, tmp_path):
    config, checkpoint = trained_demo('cls')
    result = run_test_tool(config, checkpoint, '--tta')
    assert result.returncode != 0 and 'defines no tta_model or tta_pipeline' in result.stderr
    result = run_test_tool(config, checkpoint, '--out', str(tmp_path / 'metrics.json'))
    assert result.returncode != 0 and 'name a .pkl file' in result.stderr
