"""mmdet's COCO metric with every class's AP keyed by the metric it belongs to."""
from collections import OrderedDict
from typing import Dict, List

from mmdet.evaluation import CocoMetric

from mmsape.registry import METRICS

#: mmdet's key of a class's AP with ``classwise=True``: ``'<class>_precision'``.
_MMDET_CLASS_SUFFIX = '_precision'


@METRICS.register_module()
class PerClassCocoMetric(CocoMetric):
    """:class:`mmdet.evaluation.CocoMetric` whose per-class APs say which
    metric they are.

    With ``classwise=True``, mmdet 3.3 returns each class's AP as
    ``'<class>_precision'`` for every metric in turn, so with
    ``metric=['bbox', 'segm']`` the box APs are overwritten by the mask APs and
    only the logged table shows them. This metric evaluates each metric on its
    own and returns ``'<metric>_AP.<class>'`` (AP at IoU 0.50:0.95 over all
    areas, a fraction as mmdet's; NaN for a class without ground truth), e.g.
    ``coco/bbox_AP.top_disc`` next to ``coco/segm_AP.top_disc``. Every other
    result is mmdet's, unchanged, and the per-class tables (AP, AP50, AP75, by
    area) are still logged.

    Args:
        **kwargs: :class:`~mmdet.evaluation.CocoMetric`'s arguments;
            ``classwise`` is always True.

    Example config::

        val_evaluator = dict(type='mmsape.PerClassCocoMetric', ann_file=...,
                             metric=['bbox', 'segm'])
    """

    def __init__(self, **kwargs) -> None:
        kwargs['classwise'] = True
        super().__init__(**kwargs)

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        class_keys = {name + _MMDET_CLASS_SUFFIX: name
                      for name in self.dataset_meta['classes']}
        metrics, merged = self.metrics, OrderedDict()
        # One mmdet evaluation per metric: its loop shares the class keys, and
        # it exposes nothing per metric. The price is writing the prediction
        # JSON once per metric (the ground truth is converted once).
        try:
            for metric in metrics:
                self.metrics = [metric]
                for key, value in super().compute_metrics(results).items():
                    if key in class_keys:
                        merged[f'{metric}_AP.{class_keys[key]}'] = value
                    else:
                        merged[key] = value
        finally:
            self.metrics = metrics
        return merged
