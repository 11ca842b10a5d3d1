"""Checks of labels and annotations where OpenMMLab's stock code gives a
silently wrong result.

* :class:`CheckSegLabelRange`: a segmentation map value outside the classes
  passes mmseg's pipeline unchanged, and ``IoUMetric``'s histograms then drop
  it, so mIoU is silently computed on part of the labels.
* :func:`check_coco_annotations`: mmdet's ``CocoDataset`` drops annotations
  whose ``category_id`` is not in ``categories`` and reports an empty or
  invalid JSON file without its name.
"""
import json
import os
import os.path as osp
from typing import Sequence, Union

import numpy as np
from mmcv.transforms import BaseTransform

from mmsape.registry import TRANSFORMS

from .loading import DataFileError


@TRANSFORMS.register_module()
class CheckSegLabelRange(BaseTransform):
    """Refuse segmentation maps with values outside ``[0, num_classes)`` and
    ``ignore_index``.

    Put it after ``LoadAnnotations`` (whose ``reduce_zero_label`` maps 0 to 255
    and shifts the rest down by one, so the check sees training labels).

    Args:
        num_classes (int): Number of classes.
        ignore_index (int | Sequence[int]): Values allowed besides the classes.
            Defaults to 255.
    """

    def __init__(self, num_classes: int, ignore_index: Union[int, Sequence[int]] = 255) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                or num_classes < 1:
            raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
        self.num_classes = num_classes
        self.ignore_index = ((ignore_index, ) if isinstance(ignore_index, int)
                             else tuple(ignore_index))

    def transform(self, results: dict) -> dict:
        seg_map = np.asarray(results['gt_seg_map'])
        values = np.unique(seg_map)
        bad = values[((values < 0) | (values >= self.num_classes))
                     & ~np.isin(values, self.ignore_index)]
        if bad.size:
            source = results.get('seg_map_path', '<unknown file>')
            counts = {int(v): int((seg_map == v).sum()) for v in bad[:10]}
            raise DataFileError(
                f'Segmentation map {source!r} has label values {counts} (value: pixels) '
                f'outside [0, {self.num_classes}) and ignore_index {list(self.ignore_index)}'
                f'; mIoU would silently skip these pixels. Fix the map, the number of '
                f'classes, or reduce_zero_label (now '
                f'{results.get("reduce_zero_label", "unset")}).')
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'ignore_index={list(self.ignore_index)})')


def check_coco_annotations(ann_file: Union[str, os.PathLike]) -> dict:
    """Validate a COCO annotation file before mmdet's ``CocoDataset`` reads it.

    Raises :class:`DataFileError` naming the file for an empty or invalid JSON
    file, missing ``images`` / ``annotations`` / ``categories`` lists, and
    annotations whose ``category_id`` or ``image_id`` is not declared (which
    ``CocoDataset`` would drop silently).

    Returns:
        dict: The parsed annotations.
    """
    path = os.fspath(ann_file)
    if not osp.isfile(path):
        raise FileNotFoundError(f'COCO annotation file {path!r} does not exist.')
    if osp.getsize(path) == 0:
        raise DataFileError(f'COCO annotation file {path!r} is empty.')
    try:
        with open(path, encoding='utf-8') as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFileError(f'COCO annotation file {path!r} is not valid JSON '
                            f'({error}).') from None
    missing = [key for key in ('images', 'annotations', 'categories')
               if not isinstance(coco, dict) or not isinstance(coco.get(key), list)]
    if missing:
        raise DataFileError(f'COCO annotation file {path!r} lacks the list(s) '
                            f'{", ".join(missing)}.')
    category_ids = {c.get('id') for c in coco['categories']}
    image_ids = {image.get('id') for image in coco['images']}
    for key, declared, what in (('category_id', category_ids, 'categories'),
                                ('image_id', image_ids, 'images')):
        bad = [a for a in coco['annotations'] if a.get(key) not in declared]
        if bad:
            examples = ', '.join(f'annotation {a.get("id")} has {key} {a.get(key)}'
                                 for a in bad[:3])
            raise DataFileError(
                f'COCO annotation file {path!r}: {len(bad)} annotation(s) refer to '
                f'{what} it does not declare ({examples}); mmdet would drop them '
                f'silently. Declared {key}s: {sorted(declared, key=str)[:20]}.')
    return coco


__all__ = ['CheckSegLabelRange', 'check_coco_annotations']
