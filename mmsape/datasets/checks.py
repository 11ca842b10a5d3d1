"""Data checks that fail loudly, naming the file, where OpenMMLab's stock code
fails without the file name or gives a silently wrong result.

* :class:`CheckedLoadImageFromFile`: mmcv's ``LoadImageFromFile`` reports
  undecodable or truncated files with a bare ``assert`` (removed by
  ``python -O``, after which ``None`` flows on) and, depending on the decoder,
  an empty file with OpenCV's ``!buf.empty()`` error naming no file. Decoders
  other than OpenCV 5 (e.g. Pillow with ``LOAD_TRUNCATED_IMAGES``) may decode a
  truncated JPEG with grey rows, so the JPEG end marker is checked too.
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
from typing import Optional, Sequence, Union

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform, LoadImageFromFile
from mmengine import fileio
from mmengine.logging import print_log

from mmsape.registry import TRANSFORMS

_JPEG_START, _JPEG_END = b'\xff\xd8', b'\xff\xd9'


class DataFileError(ValueError):
    """A data file (image, map, annotation) is missing, corrupt or invalid."""


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` whose errors name the file and the fix.

    Same arguments and outputs. A missing file raises ``FileNotFoundError``, an
    unreadable one :class:`DataFileError` (a ``ValueError``), both naming the
    path; with ``ignore_empty=True`` the sample is skipped with a logged
    warning instead (mmcv skips silently).

    Args:
        check_jpeg_end (bool): Refuse ``.jpg`` / ``.jpeg`` files whose data does
            not end with the JPEG end-of-image marker (a truncated download or
            copy), which some decoders complete with grey rows.
            Defaults to True.
        **kwargs: Arguments of :class:`mmcv.transforms.LoadImageFromFile`.
    """

    def __init__(self, check_jpeg_end: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.check_jpeg_end = check_jpeg_end

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['img_path']
        try:
            if self.file_client_args is not None:
                img_bytes = fileio.FileClient.infer_client(self.file_client_args,
                                                           filename).get(filename)
            else:
                img_bytes = fileio.get(filename, backend_args=self.backend_args)
            reason = self._bytes_problem(filename, img_bytes)
            img = None if reason else mmcv.imfrombytes(
                img_bytes, flag=self.color_type, backend=self.imdecode_backend)
            if img is None and not reason:
                reason = (f'the {self.imdecode_backend} backend cannot decode its '
                          f'{len(img_bytes)} bytes')
        except FileNotFoundError as error:
            return self._fail(filename, FileNotFoundError(
                f'Image file {filename!r} does not exist ({error.strerror or error}). '
                f'Check data_root / data_prefix and the annotation file listing it.'))
        except Exception as error:  # decoder errors (cv2.error, PIL) name no file
            reason = f'{type(error).__name__}: {error}'.strip()
        if reason:
            return self._fail(filename, DataFileError(
                f'Cannot load image {filename!r}: {reason}. The file is corrupt or not '
                f'an image; re-extract / re-download it or remove it from the dataset.'))
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def _bytes_problem(self, filename: str, img_bytes: bytes) -> Optional[str]:
        if not img_bytes:
            return 'the file is empty'
        is_jpeg = osp.splitext(str(filename))[1].lower() in ('.jpg', '.jpeg')
        if (self.check_jpeg_end and is_jpeg and img_bytes.startswith(_JPEG_START)
                and not img_bytes.rstrip(b'\x00').endswith(_JPEG_END)):
            return 'the JPEG data has no end-of-image marker (the file is truncated)'
        return None

    def _fail(self, filename: str, error: Exception) -> None:
        if self.ignore_empty:
            print_log(f'Skipped: {error}', logger='current', level=30)
            return None
        raise error

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}, check_jpeg_end={self.check_jpeg_end})'


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


__all__ = ['DataFileError', 'CheckedLoadImageFromFile', 'CheckSegLabelRange',
           'check_coco_annotations']
