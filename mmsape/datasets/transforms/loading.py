"""Image loading that fails loudly, naming the file.

mmcv's ``LoadImageFromFile`` reports undecodable or truncated files with a bare
``assert`` (removed by ``python -O``, after which ``None`` flows on) and,
depending on the decoder, an empty file with OpenCV's ``!buf.empty()`` error
naming no file. Decoders other than OpenCV 5 (e.g. Pillow with
``LOAD_TRUNCATED_IMAGES``) may decode a truncated JPEG with grey rows, so
:class:`CheckedLoadImageFromFile` checks the JPEG end marker too.
"""
import os.path as osp
from typing import Optional

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
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


__all__ = ['DataFileError', 'CheckedLoadImageFromFile']
