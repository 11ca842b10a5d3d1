from .demo_data import (
    DEMO_CLS_CLASSES,
    DEMO_DET_CLASSES,
    DEMO_SEG_CLASSES,
    DEMO_SEG_PALETTE,
    GENERATOR_VERSION,
    DemoShape,
    classification_layout_label,
    detection_disc_label,
    ensure_demo_data,
    generate_demo_data,
    is_demo_data_current,
    read_demo_manifest,
    sample_classification_shapes,
    sample_detection_shapes,
    sample_segmentation_shapes,
    segmentation_pair_labels,
)

__all__ = [
    'DEMO_CLS_CLASSES', 'DEMO_DET_CLASSES', 'DEMO_SEG_CLASSES', 'DEMO_SEG_PALETTE',
    'GENERATOR_VERSION', 'DemoShape', 'classification_layout_label',
    'detection_disc_label', 'segmentation_pair_labels', 'sample_classification_shapes',
    'sample_detection_shapes', 'sample_segmentation_shapes', 'generate_demo_data',
    'ensure_demo_data', 'is_demo_data_current', 'read_demo_manifest'
]
from .checks import (  # noqa: E402
    CheckedLoadImageFromFile,
    CheckSegLabelRange,
    DataFileError,
    check_coco_annotations,
)

__all__ += [
    'CheckedLoadImageFromFile', 'CheckSegLabelRange', 'DataFileError', 'check_coco_annotations'
]
