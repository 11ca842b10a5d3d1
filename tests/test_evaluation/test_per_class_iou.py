"""PerClassIoUMetric: mmseg's IoU metric plus each class's IoU, checked against
IoU counted by hand and against mmseg's own metric on the same predictions."""
import math

import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.evaluation import IoUMetric
from mmseg.structures import SegDataSample

CLASSES = ('background', 'spot', 'blob', 'never_seen')


def samples(seed: int, count: int = 3):
    """Random label maps and predictions over the first three classes, with an
    ignored (255) border; class 3 appears in neither."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        label = torch.randint(0, 3, (1, 9, 11), generator=generator)
        label[..., 0] = 255
        pred = torch.where(torch.rand(1, 9, 11, generator=generator) < 0.6, label,
                           torch.randint(0, 3, (1, 9, 11), generator=generator))
        pred[..., 0] = 0  # predictions under ignored labels must not count
        out.append(SegDataSample(gt_sem_seg=PixelData(data=label),
                                 pred_sem_seg=PixelData(data=pred)).to_dict())
    return out


def hand_iou(data_samples) -> np.ndarray:
    intersect, union = np.zeros(len(CLASSES)), np.zeros(len(CLASSES))
    for sample in data_samples:
        label = sample['gt_sem_seg']['data'].numpy().ravel()
        pred = sample['pred_sem_seg']['data'].numpy().ravel()
        keep = label != 255
        label, pred = label[keep], pred[keep]
        for cls in range(len(CLASSES)):
            intersect[cls] += np.sum((label == cls) & (pred == cls))
            union[cls] += np.sum((label == cls) | (pred == cls))
    with np.errstate(invalid='ignore'):
        return 100 * intersect / union


def evaluate(metric, data_samples) -> dict:
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process([], data_samples)
    return metric.compute_metrics(metric.results)


def test_per_class_iou_matches_hand_count_and_mmseg():
    from mmsape.registry import METRICS
    data_samples = samples(0)
    # The scoped name, as configs of any toolbox write it: an unscoped name would
    # depend on whichever default scope an earlier Runner in this process left.
    results = evaluate(METRICS.build(dict(type='mmsape.PerClassIoUMetric')), data_samples)
    expected = hand_iou(data_samples)
    for name, value in zip(CLASSES[:3], expected[:3]):
        assert results[f'IoU.{name}'] == pytest.approx(value, abs=0.005)
    assert math.isnan(results['IoU.never_seen'])  # no label, no prediction
    mmseg_results = evaluate(IoUMetric(), data_samples)
    assert {k: v for k, v in results.items() if not k.startswith('IoU.')} == mmseg_results
    assert results['mIoU'] == pytest.approx(np.nanmean(expected), abs=0.01)


def test_scoped_type_from_mmseg_and_needs_miou():
    from mmseg.registry import METRICS
    from mmseg.utils import register_all_modules
    register_all_modules()
    metric = METRICS.build(dict(type='mmsape.PerClassIoUMetric', iou_metrics=['mIoU', 'mDice']))
    assert type(metric).__name__ == 'PerClassIoUMetric'
    with pytest.raises(ValueError, match="must include 'mIoU'"):
        METRICS.build(dict(type='mmsape.PerClassIoUMetric', iou_metrics=['mDice']))
