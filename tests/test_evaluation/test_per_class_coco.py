"""PerClassCocoMetric: each class's AP keyed by its metric, checked on a case
whose APs are known by construction and against mmdet's CocoMetric run on one
metric at a time (where its '<class>_precision' keys are unambiguous)."""
import json
import math

import pytest
import torch
from mmdet.evaluation import CocoMetric

CLASSES = ('left', 'right', 'absent')
SIZE = 32


def rectangle(x0, y0, x1, y1) -> list:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def ann_file(tmp_path) -> str:
    """Two images, each with one 'left' box at x 2..12 and one 'right' box at
    x 18..28 (rows 4..20); no 'absent' object."""
    images, annotations = [], []
    for image_id in (1, 2):
        images.append(dict(id=image_id, file_name=f'{image_id}.jpg', width=SIZE, height=SIZE))
        for category_id, x0 in ((1, 2), (2, 18)):
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=category_id,
                bbox=[x0, 4, 10, 16], area=160, iscrowd=0,
                segmentation=rectangle(x0, 4, x0 + 10, 20)))
    path = tmp_path / 'instances.json'
    path.write_text(json.dumps(dict(
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)])))
    return str(path)


def mask(x0, y0, x1, y1) -> torch.Tensor:
    out = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    out[y0:y1, x0:x1] = True
    return out


def predictions() -> list:
    """'left': exact boxes, masks on the wrong side (box AP 1, mask AP 0);
    'right': boxes on the wrong side, exact masks (box AP 0, mask AP 1)."""
    samples = []
    for image_id in (1, 2):
        bboxes = torch.tensor([[2., 4., 12., 20.], [2., 4., 12., 20.]])
        masks = torch.stack([mask(18, 4, 28, 20), mask(18, 4, 28, 20)])
        samples.append(dict(img_id=image_id, ori_shape=(SIZE, SIZE), pred_instances=dict(
            bboxes=bboxes, scores=torch.tensor([0.9, 0.8]), labels=torch.tensor([0, 1]),
            masks=masks)))
    return samples


def evaluate(metric) -> dict:
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, predictions())
    return metric.compute_metrics(metric.results)


def test_each_class_ap_is_keyed_by_its_metric(ann_file):
    from mmsape.registry import METRICS
    results = evaluate(METRICS.build(dict(type='mmsape.PerClassCocoMetric', ann_file=ann_file,
                                          metric=['bbox', 'segm'])))
    assert results['bbox_AP.left'] == pytest.approx(1.0)
    assert results['bbox_AP.right'] == pytest.approx(0.0)
    assert results['segm_AP.left'] == pytest.approx(0.0)
    assert results['segm_AP.right'] == pytest.approx(1.0)
    assert math.isnan(results['bbox_AP.absent']) and math.isnan(results['segm_AP.absent'])
    assert not any(key.endswith('_precision') for key in results)

    # mmdet's own metric: one metric per run gives the same values and the same
    # summaries; both metrics at once keep only the last one's per-class APs.
    for name in ('bbox', 'segm'):
        single = evaluate(CocoMetric(ann_file=ann_file, metric=name, classwise=True))
        for cls in CLASSES[:2]:
            assert results[f'{name}_AP.{cls}'] == single[f'{cls}_precision']
        summaries = {k: v for k, v in single.items() if not k.endswith('_precision')}
        assert {k: results[k] for k in summaries} == summaries
    both = evaluate(CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'], classwise=True))
    assert both['left_precision'] == results['segm_AP.left']  # the bbox value is lost there


def test_the_metric_list_survives_a_failed_evaluation(ann_file):
    from mmsape.evaluation import PerClassCocoMetric
    metric = PerClassCocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=CLASSES)
    with pytest.raises(ValueError):
        metric.compute_metrics([])  # nothing processed: mmdet's own unpacking error
    assert metric.metrics == ['bbox', 'segm']
