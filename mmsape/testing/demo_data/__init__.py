"""Deterministic synthetic datasets, in the real on-disk formats, for demos and tests.

The package registers nothing: :mod:`.shapes` decides what each image holds (and
the label rules), :mod:`.rendering` draws it, :mod:`.writers` writes each task's
files and :mod:`.generator` owns the output folder and its manifest.

Model hubs and dataset downloads are out of reach, so the README demo and the
end-to-end tests train on small generated datasets. They use the exact layouts
that mmpretrain, mmdet and mmseg read, so a config that works on them works on
the real datasets once ``data_root`` changes:

.. code-block:: none

    <out>/
    ├── demo_data_manifest.json          # generator version, seed, counts
    ├── imagenet/
    │   ├── train/<class>/<class>_00000.jpg
    │   ├── val/<class>/<class>_00000.jpg
    │   └── meta/{classes,train,val}.txt   # optional ann_file route
    ├── coco/
    │   ├── train2017/000000000001.jpg
    │   ├── val2017/000001000001.jpg
    │   └── annotations/instances_{train,val}2017.json
    └── ade/
        ├── classes.txt                    # DEMO_SEG_CLASSES, one per line
        └── ADEChallengeData2016/
            ├── images/{training,validation}/ADE_{train,val}_00000001.jpg
            └── annotations/{training,validation}/ADE_{train,val}_00000001.png

Why the content looks the way it does
-------------------------------------
The toolkit compares position encodings, so every task mixes *easy* classes,
decided by colour alone (any model, even one without position encoding, learns
them within minutes, which keeps metrics non-trivial) with *layout* classes
whose appearance is identical and whose label depends only on where things are.
A ViT without position encoding sees a bag of patches and cannot tell those
apart; the gap between encodings shows on them. Backgrounds are repeated
low-saturation textures (stripes, checkers, dots) so that a patch's content does
not reveal its position either. Image sizes vary, are never square (aspect 1:2
to 2:1) and are mostly not multiples of 16, to exercise variable token grids.

* **Classification** (``DEMO_CLS_CLASSES``, mmpretrain ``CustomDataset``):
  ``cyan_square`` and ``green_disc`` are easy (one blob of a reserved colour,
  anywhere). ``pair_horizontal`` / ``pair_vertical``: two identical blobs side
  by side / stacked; a vertical sample is a transposed horizontal one, drawn
  from the same distribution of colours, shapes and sizes.
  ``spot_top`` / ``spot_bottom``: one blob entirely in the upper / lower half
  (a vertically flipped ``spot_top`` sample). See
  :func:`classification_layout_label`.
* **Detection** (``DEMO_DET_CLASSES``, mmdet ``CocoDataset``): ``green_disc``
  is easy, ``bar`` is a shape class (an axis-aligned bar of either
  orientation). ``top_disc`` / ``bottom_disc`` look the same (one colour per
  image, shared by all of that image's top and bottom discs): a disc's category
  is the half of the image it lies in (:func:`detection_disc_label`).
* **Segmentation** (``DEMO_SEG_CLASSES``, mmseg ``BaseSegDataset``): the
  textured ``background`` and ``green_blob`` regions are easy. Each image holds
  one vertically stacked pair of identical blobs, anywhere in the image (small
  and tight enough that about 30% of pairs lie within one half): the upper one
  is ``upper_blob``, the lower one ``lower_blob``, a *relative* arrangement
  (:func:`segmentation_pair_labels`).
  Label 0 marks a thin ring on every region boundary, where JPEG blurs colours:
  "other", ignored by the loss and the metric as in ADE20K.

Horizontal flips preserve every label (so the usual ``RandomFlip`` stays valid);
vertical flips, transposes and rotations do not, and crops may move a spot or a
disc across the midline: prefer ``Resize`` to random crops on these tasks.

Config snippets
---------------
mmseg's ``ADE20KDataset`` hard-codes the 150 ADE classes and rejects class names
outside them (``BaseSegDataset.get_label_map`` raises ``ValueError``), so the
segmentation demo uses the registered ``BaseSegDataset`` on the same layout::

    from mmsape.testing.demo_data import DEMO_SEG_CLASSES, DEMO_SEG_PALETTE
    dataset = dict(
        type='BaseSegDataset',
        data_root='data/demo/ade/ADEChallengeData2016',
        data_prefix=dict(img_path='images/training',
                         seg_map_path='annotations/training'),
        img_suffix='.jpg', seg_map_suffix='.png',
        reduce_zero_label=True,  # 0 -> 255 (ignored), k -> k - 1
        metainfo=dict(classes=DEMO_SEG_CLASSES, palette=DEMO_SEG_PALETTE))

Detection (categories are written in ``DEMO_DET_CLASSES`` order, ids 1..K, which
is the order mmdet's ``cat2label`` follows)::

    dataset = dict(
        type='CocoDataset', data_root='data/demo/coco/',
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        metainfo=dict(classes=DEMO_DET_CLASSES))

Classification (class folders sort to ``DEMO_CLS_CLASSES`` order, which is how
``CustomDataset`` numbers them)::

    dataset = dict(type='CustomDataset', data_root='data/demo/imagenet',
                   data_prefix='train')

Determinism: every image has its own generator seeded by ``(seed, task, split,
index)``, so a seed gives byte-identical files, and changing ``num_train`` or
``num_val`` leaves the images that exist in both runs unchanged.
"""
from .generator import (
                        DEFAULT_NUM_TRAIN,
                        DEFAULT_NUM_VAL,
                        GENERATOR_VERSION,
                        MANIFEST_NAME,
                        ensure_demo_data,
                        generate_demo_data,
                        is_demo_data_current,
                        read_demo_manifest,
)
from .shapes import (
                        DEMO_CLS_CLASSES,
                        DEMO_DET_CLASSES,
                        DEMO_SEG_CLASSES,
                        DEMO_SEG_PALETTE,
                        SEG_LOWER,
                        SEG_UPPER,
                        DemoShape,
                        classification_layout_label,
                        detection_disc_label,
                        sample_classification_shapes,
                        sample_detection_shapes,
                        sample_segmentation_shapes,
                        segmentation_pair_labels,
)

__all__ = [
    'DEMO_CLS_CLASSES', 'DEMO_DET_CLASSES', 'DEMO_SEG_CLASSES', 'DEMO_SEG_PALETTE',
    'GENERATOR_VERSION', 'MANIFEST_NAME', 'DEFAULT_NUM_TRAIN', 'DEFAULT_NUM_VAL',
    'SEG_UPPER', 'SEG_LOWER', 'DemoShape', 'classification_layout_label',
    'detection_disc_label', 'segmentation_pair_labels', 'sample_classification_shapes',
    'sample_detection_shapes', 'sample_segmentation_shapes', 'generate_demo_data',
    'ensure_demo_data', 'is_demo_data_current', 'read_demo_manifest'
]
