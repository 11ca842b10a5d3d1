"""Evaluation metrics, registered in :data:`mmsape.registry.METRICS`
(``type='mmsape.PerClassIoUMetric'`` from any toolbox's config)."""
from .per_class_coco import PerClassCocoMetric
from .per_class_iou import PerClassIoUMetric

__all__ = ['PerClassCocoMetric', 'PerClassIoUMetric']
