"""mmseg's IoU metric with every class's IoU among its results."""
from typing import Dict, List

import numpy as np
from mmseg.evaluation import IoUMetric

from mmsape.registry import METRICS


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """:class:`mmseg.evaluation.IoUMetric` that also returns each class's IoU.

    mmseg's metric logs the per-class table but returns only the summaries
    (``aAcc``, ``mIoU``, ...). This one adds ``IoU.<class name>`` (percent, two
    decimals, NaN for a class absent from both the labels and the predictions),
    so that ``runner.test()`` and :func:`mmsape.analysis.evaluate_at_sizes` see
    them: analyses that group classes (e.g. by what defines them) need them.
    Every other result is mmseg's, unchanged.

    Args:
        **kwargs: :class:`~mmseg.evaluation.IoUMetric`'s arguments;
            ``iou_metrics`` must include ``'mIoU'``.

    Example config::

        test_evaluator = dict(type='mmsape.PerClassIoUMetric', iou_metrics=['mIoU'])
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if 'mIoU' not in self.metrics:
            raise ValueError(f"PerClassIoUMetric reports per-class IoU, so iou_metrics must "
                             f"include 'mIoU'; got {self.metrics}.")

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if not results:  # format_only: nothing was measured
            return metrics
        intersect = sum(result[0] for result in results)
        union = sum(result[1] for result in results)
        per_class = self.total_area_to_metrics(
            intersect, union, sum(result[2] for result in results),
            sum(result[3] for result in results), ['mIoU'], self.nan_to_num, self.beta)['IoU']
        for name, value in zip(self.dataset_meta['classes'], np.asarray(per_class)):
            metrics[f'IoU.{name}'] = round(float(value) * 100, 2)
        return metrics
