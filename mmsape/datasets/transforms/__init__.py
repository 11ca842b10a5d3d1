from .checks import CheckSegLabelRange, check_coco_annotations
from .loading import CheckedLoadImageFromFile, DataFileError

__all__ = [
    'CheckedLoadImageFromFile', 'CheckSegLabelRange', 'DataFileError', 'check_coco_annotations'
]
