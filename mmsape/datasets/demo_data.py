"""Deterministic synthetic datasets, in the real on-disk formats, for demos and tests.

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

    from mmsape.datasets import DEMO_SEG_CLASSES, DEMO_SEG_PALETTE
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
import colorsys
import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

#: Bump whenever the generated bytes change; stale demo data is then regenerated.
GENERATOR_VERSION = 1
MANIFEST_NAME = 'demo_data_manifest.json'
DEFAULT_NUM_TRAIN = 48
DEFAULT_NUM_VAL = 16

#: Classification classes. Sorted on purpose: mmpretrain's ``CustomDataset``
#: numbers class folders in sorted order.
DEMO_CLS_CLASSES = ('cyan_square', 'green_disc', 'pair_horizontal', 'pair_vertical',
                    'spot_bottom', 'spot_top')
#: Detection categories, in COCO category-id order (id = index + 1).
DEMO_DET_CLASSES = ('green_disc', 'top_disc', 'bottom_disc', 'bar')
#: Segmentation classes for label values 1..K (0 is "other", ignored).
DEMO_SEG_CLASSES = ('background', 'green_blob', 'upper_blob', 'lower_blob')
#: One RGB colour per entry of ``DEMO_SEG_CLASSES``, for mmseg's visualizer.
DEMO_SEG_PALETTE = [[120, 120, 120], [0, 200, 0], [220, 20, 60], [30, 144, 255]]

# Label values in the segmentation PNGs.
SEG_IGNORE_VALUE = 0
SEG_BACKGROUND, SEG_GREEN, SEG_UPPER, SEG_LOWER = 1, 2, 3, 4

JPEG_QUALITY = 95
MIN_SIDE, MAX_SIDE = 48, 160
# COCO image ids are unique across splits; val ids start here (as val2017's are
# disjoint from train2017's), which also keeps them stable when num_train changes.
COCO_VAL_ID_OFFSET = 1_000_000

# Hue ranges (degrees). Layout objects never use the reserved easy-class hues,
# so colour says nothing about a layout class.
_LAYOUT_HUES = ((-50.0, 45.0), (220.0, 280.0))
_GREEN_HUE = (112.0, 128.0)
_CYAN_HUE = (180.0, 190.0)
_BLOB_KINDS = ('disc', 'square', 'diamond')
_DISC_VERTICES = 24  # a multiple of 4: the polygon is symmetric under transposition
_MARGIN = 1.0  # pixels kept free between an object and the image border
_GAP = 2.0  # pixels kept free between two objects' boxes

_TASK_IDS = {'imagenet': 0, 'coco': 1, 'ade': 2}
_SPLIT_IDS = {'train': 0, 'val': 1}
# Entries of <out>/ the generator owns; nothing else there is touched.
_OWNED_ENTRIES = ('imagenet', 'coco', 'ade', MANIFEST_NAME)

Color = Tuple[int, int, int]


# eq=False: numpy arrays have no truth value, so field-wise == would raise.
@dataclass(eq=False)
class DemoShape:
    """A filled polygon drawn into a demo image.

    Args:
        polygon (np.ndarray): ``(N, 2)`` float vertices ``(x, y)`` in pixels,
            rounded to 2 decimals so that the drawn shape and the written
            annotation are the same numbers.
        color (tuple[int, int, int]): RGB fill.
        label (str): Class name of the shape (task specific).
        kind (str): Drawing primitive: ``'disc'``, ``'square'``, ``'diamond'`` or
            ``'bar'``. Informative only.
    """
    polygon: np.ndarray
    color: Color
    label: str = ''
    kind: str = ''

    @property
    def center(self) -> Tuple[float, float]:
        """Centre of the bounding box, ``(x, y)``."""
        x0, y0, x1, y1 = self.bbox_xyxy
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def bbox_xyxy(self) -> Tuple[float, float, float, float]:
        """Extent of the polygon, ``(x_min, y_min, x_max, y_max)``."""
        x0, y0 = self.polygon.min(axis=0)
        x1, y1 = self.polygon.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def transposed(self) -> 'DemoShape':
        """The shape mirrored about the main diagonal (``x`` and ``y`` swapped)."""
        return DemoShape(self.polygon[:, ::-1].copy(), self.color, self.label, self.kind)

    def vflipped(self, height: float) -> 'DemoShape':
        """The shape mirrored top to bottom in an image ``height`` pixels tall."""
        polygon = self.polygon.copy()
        polygon[:, 1] = np.round(height - polygon[:, 1], 2)
        return DemoShape(polygon, self.color, self.label, self.kind)

    def hflipped(self, width: float) -> 'DemoShape':
        """The shape mirrored left to right in an image ``width`` pixels wide."""
        polygon = self.polygon.copy()
        polygon[:, 0] = np.round(width - polygon[:, 0], 2)
        return DemoShape(polygon, self.color, self.label, self.kind)


# --------------------------------------------------------------------------- #
# Label rules: the single source of truth the generator follows and tests check.
# --------------------------------------------------------------------------- #
def classification_layout_label(centers: Sequence[Tuple[float, float]],
                                height: float) -> str:
    """Class of a layout classification sample from its blob centres.

    Two blobs: ``pair_horizontal`` when they are further apart in x than in y,
    else ``pair_vertical``. One blob: ``spot_top`` when its centre lies above the
    image's horizontal midline, else ``spot_bottom``. Colour plays no part.

    Args:
        centers (Sequence[tuple[float, float]]): Blob centres ``(x, y)``.
        height (float): Image height in pixels.

    Returns:
        str: One of the four layout classes of ``DEMO_CLS_CLASSES``.
    """
    if len(centers) == 2:
        (xa, ya), (xb, yb) = centers
        return 'pair_horizontal' if abs(xa - xb) > abs(ya - yb) else 'pair_vertical'
    if len(centers) == 1:
        return 'spot_top' if centers[0][1] < height / 2 else 'spot_bottom'
    raise ValueError(f'a layout sample has 1 or 2 blobs, got {len(centers)}')


def detection_disc_label(center_y: float, height: float) -> str:
    """Category of a (non-green) detection disc: the image half it lies in.

    Args:
        center_y (float): Disc centre row in pixels.
        height (float): Image height in pixels.

    Returns:
        str: ``'top_disc'`` or ``'bottom_disc'``.
    """
    return 'top_disc' if center_y < height / 2 else 'bottom_disc'


def segmentation_pair_labels(center_y_a: float, center_y_b: float) -> Tuple[int, int]:
    """Label values of the two members of a segmentation pair.

    The member higher in the image is ``upper_blob``, the other ``lower_blob``,
    wherever the pair sits: a relative, not absolute, arrangement.

    Args:
        center_y_a (float): Centre row of member a.
        center_y_b (float): Centre row of member b.

    Returns:
        tuple[int, int]: PNG label values of a and b (``SEG_UPPER`` / ``SEG_LOWER``).
    """
    if center_y_a == center_y_b:
        raise ValueError('a segmentation pair must be stacked vertically')
    if center_y_a < center_y_b:
        return SEG_UPPER, SEG_LOWER
    return SEG_LOWER, SEG_UPPER


# --------------------------------------------------------------------------- #
# Sampling primitives.
# --------------------------------------------------------------------------- #
def _sample_image_size(rng: np.random.Generator) -> Tuple[int, int]:
    """A non-square ``(width, height)`` with aspect ratio within [1/2, 2]."""
    while True:
        width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
        if width != height and 0.5 <= width / height <= 2.0:
            return width, height


def _hsv_color(hue_deg: float, rng: np.random.Generator) -> Color:
    """A saturated, bright RGB colour of the given hue."""
    saturation, value = rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _layout_color(rng: np.random.Generator) -> Color:
    """A colour for layout objects, drawn away from the reserved easy hues."""
    low, high = _LAYOUT_HUES[int(rng.integers(len(_LAYOUT_HUES)))]
    return _hsv_color(rng.uniform(low, high), rng)


def _hue_color(hue_range: Tuple[float, float], rng: np.random.Generator) -> Color:
    return _hsv_color(rng.uniform(*hue_range), rng)


def _blob_radius(rng: np.random.Generator, width: int, height: int,
                 scale: Tuple[float, float] = (0.08, 0.13)) -> float:
    """Blob radius, a ``scale`` fraction of the shorter side (at least 5 px)."""
    return max(5.0, rng.uniform(*scale) * min(width, height))


def _blob_polygon(kind: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """Vertices of a disc, square or diamond of the given radius.

    All three are symmetric under transposition and flips about their centre, so
    a transposed/flipped blob is the same blob at a moved centre.
    """
    if kind == 'disc':
        angles = 2 * np.pi * np.arange(_DISC_VERTICES) / _DISC_VERTICES
        offsets = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif kind == 'square':
        offsets = radius * np.array([[-1., -1.], [1., -1.], [1., 1.], [-1., 1.]])
    elif kind == 'diamond':
        offsets = 1.25 * radius * np.array([[0., -1.], [1., 0.], [0., 1.], [-1., 0.]])
    else:
        raise ValueError(f'unknown blob kind {kind!r}')
    return np.round(offsets + np.array([cx, cy]), 2)


def _bar_polygon(cx: float, cy: float, half_length: float, half_thickness: float,
                 horizontal: bool) -> np.ndarray:
    hx, hy = (half_length, half_thickness) if horizontal else (half_thickness, half_length)
    corners = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
    return np.round(corners + np.array([cx, cy]), 2)


def _boxes_clear(box: Tuple[float, float, float, float],
                 others: Sequence[Tuple[float, float, float, float]]) -> bool:
    """Whether ``box`` keeps at least ``_GAP`` pixels from every box in ``others``."""
    x0, y0, x1, y1 = box
    return all(x1 + _GAP <= ox0 or ox1 + _GAP <= x0 or y1 + _GAP <= oy0 or oy1 + _GAP <= y0
               for ox0, oy0, ox1, oy1 in others)


def _sample_horizontal_pair(rng: np.random.Generator, width: int, height: int,
                            radius: float,
                            max_spread: Optional[float] = None) -> List[Tuple[float, float]]:
    """Centres of two blobs side by side, fully inside a ``width x height`` image.

    Their x distance is at least 2.6 blob reaches (a visible gap) and their y
    offset at most 0.35 of it, so the pair reads as horizontal with a wide
    margin. ``max_spread`` caps the x distance, in reaches.
    """
    reach = radius * 1.25 + _MARGIN  # the diamond pokes out furthest
    min_dx = 2.6 * reach
    max_dx = width - 2 * reach
    if max_spread is not None:
        max_dx = min(max_dx, max_spread * reach)
    max_dx = max(min_dx, max_dx)
    dx = rng.uniform(min_dx, max_dx)
    max_dy = max(0.0, min(0.35 * dx, height - 2 * reach))
    dy = rng.uniform(-max_dy, max_dy)
    x0 = rng.uniform(reach, max(reach, width - reach - dx))
    y0 = rng.uniform(reach + max(0.0, -dy), max(reach + max(0.0, -dy),
                                                 height - reach - max(0.0, dy)))
    return [(x0, y0), (x0 + dx, y0 + dy)]


def _sample_blob_in_band(rng: np.random.Generator, width: int, y_low: float, y_high: float,
                         radius: float) -> Tuple[float, float]:
    """A blob centre whose whole blob lies in rows ``[y_low, y_high]``."""
    reach = radius * 1.25 + _MARGIN
    cx = rng.uniform(reach, width - reach)
    cy = rng.uniform(y_low + reach, max(y_low + reach, y_high - reach))
    return cx, cy


# --------------------------------------------------------------------------- #
# Per-task layouts.
# --------------------------------------------------------------------------- #
def sample_classification_shapes(rng: np.random.Generator, class_name: str, width: int,
                                 height: int) -> List[DemoShape]:
    """The blobs of one classification sample of ``class_name``.

    Layout classes come in mirrored pairs drawn from one distribution:
    ``pair_vertical`` is ``pair_horizontal`` sampled in the transposed image and
    transposed back; ``spot_bottom`` is ``spot_top`` flipped vertically. So with
    the same generator state the two members of a pair of classes differ only in
    layout, never in colour, shape or size.

    Args:
        rng (np.random.Generator): Source of randomness (consumed).
        class_name (str): One of ``DEMO_CLS_CLASSES``.
        width (int): Image width in pixels.
        height (int): Image height in pixels.

    Returns:
        list[DemoShape]: Shapes labelled ``class_name``.
    """
    if class_name == 'pair_vertical':
        shapes = sample_classification_shapes(rng, 'pair_horizontal', height, width)
        return [DemoShape(s.transposed().polygon, s.color, class_name, s.kind) for s in shapes]
    if class_name == 'spot_bottom':
        shapes = sample_classification_shapes(rng, 'spot_top', width, height)
        return [DemoShape(s.vflipped(height).polygon, s.color, class_name, s.kind)
                for s in shapes]

    radius = _blob_radius(rng, width, height)
    if class_name == 'pair_horizontal':
        kind = _BLOB_KINDS[int(rng.integers(len(_BLOB_KINDS)))]
        color = _layout_color(rng)
        centers = _sample_horizontal_pair(rng, width, height, radius)
    elif class_name == 'spot_top':
        kind = _BLOB_KINDS[int(rng.integers(len(_BLOB_KINDS)))]
        color = _layout_color(rng)
        centers = [_sample_blob_in_band(rng, width, 0.0, height / 2, radius)]
    elif class_name in ('green_disc', 'cyan_square'):
        kind = 'disc' if class_name == 'green_disc' else 'square'
        color = _hue_color(_GREEN_HUE if class_name == 'green_disc' else _CYAN_HUE, rng)
        centers = [_sample_blob_in_band(rng, width, 0.0, height, radius)]
    else:
        raise ValueError(f'unknown classification class {class_name!r}')
    return [DemoShape(_blob_polygon(kind, cx, cy, radius), color, class_name, kind)
            for cx, cy in centers]


def sample_detection_shapes(rng: np.random.Generator, width: int,
                            height: int) -> List[DemoShape]:
    """The objects of one detection image, labelled with ``DEMO_DET_CLASSES`` names.

    One to four non-overlapping objects (more in larger images). All top/bottom
    discs of an image share one colour, so only their position tells them apart.

    Args:
        rng (np.random.Generator): Source of randomness (consumed).
        width (int): Image width in pixels.
        height (int): Image height in pixels.

    Returns:
        list[DemoShape]: At least one shape.
    """
    max_objects = 2 + int(width * height > 8000) + int(width * height > 16000)
    num_objects = int(rng.integers(1, max_objects + 1))
    disc_color = _layout_color(rng)
    shapes: List[DemoShape] = []
    for _ in range(num_objects):
        category = str(rng.choice(DEMO_DET_CLASSES, p=[0.2, 0.3, 0.3, 0.2]))
        for _attempt in range(50):
            shape = _sample_detection_object(rng, category, width, height, disc_color)
            if _boxes_clear(shape.bbox_xyxy, [s.bbox_xyxy for s in shapes]):
                shapes.append(shape)
                break
    return shapes


def _sample_detection_object(rng: np.random.Generator, category: str, width: int,
                             height: int, disc_color: Color) -> DemoShape:
    radius = _blob_radius(rng, width, height)
    if category == 'bar':
        horizontal = bool(rng.integers(2))
        along, across = (width, height) if horizontal else (height, width)
        half_length = rng.uniform(0.15, 0.25) * along
        half_thickness = max(2.5, rng.uniform(0.03, 0.05) * min(width, height))
        c_along = rng.uniform(half_length + _MARGIN, along - half_length - _MARGIN)
        c_across = rng.uniform(half_thickness + _MARGIN, across - half_thickness - _MARGIN)
        cx, cy = (c_along, c_across) if horizontal else (c_across, c_along)
        polygon = _bar_polygon(cx, cy, half_length, half_thickness, horizontal)
        return DemoShape(polygon, _layout_color(rng), category, 'bar')
    if category == 'green_disc':
        cx, cy = _sample_blob_in_band(rng, width, 0.0, height, radius)
        return DemoShape(_blob_polygon('disc', cx, cy, radius), _hue_color(_GREEN_HUE, rng),
                         category, 'disc')
    # top_disc / bottom_disc: the whole disc inside its half, then the rule names it.
    y_low, y_high = (0.0, height / 2) if category == 'top_disc' else (height / 2, height)
    cx, cy = _sample_blob_in_band(rng, width, y_low, y_high, radius)
    label = detection_disc_label(cy, height)
    return DemoShape(_blob_polygon('disc', cx, cy, radius), disc_color, label, 'disc')


def sample_segmentation_shapes(rng: np.random.Generator, width: int,
                               height: int) -> List[DemoShape]:
    """The regions of one segmentation image, labelled with ``DEMO_SEG_CLASSES`` names.

    One vertically stacked pair of identical blobs anywhere in the image (its
    members named by :func:`segmentation_pair_labels`), then zero to two green
    blobs where they fit.

    Args:
        rng (np.random.Generator): Source of randomness (consumed).
        width (int): Image width in pixels.
        height (int): Image height in pixels.

    Returns:
        list[DemoShape]: The pair first, then the green blobs.
    """
    # Smaller, tighter pairs than in classification, so that many pairs fit in
    # one half of the image and absolute position cannot stand in for the label.
    radius = _blob_radius(rng, width, height, scale=(0.06, 0.1))
    kind = _BLOB_KINDS[int(rng.integers(len(_BLOB_KINDS)))]
    color = _layout_color(rng)
    # A vertical pair is a horizontal pair of the transposed image, transposed.
    pair = _sample_horizontal_pair(rng, height, width, radius, max_spread=4.0)
    centers = [(y, x) for x, y in pair]
    labels = segmentation_pair_labels(centers[0][1], centers[1][1])
    shapes = [DemoShape(_blob_polygon(kind, cx, cy, radius), color,
                        DEMO_SEG_CLASSES[label - 1], kind)
              for (cx, cy), label in zip(centers, labels)]
    for _ in range(int(rng.integers(0, 3))):
        green_radius = _blob_radius(rng, width, height)
        green_kind = _BLOB_KINDS[int(rng.integers(len(_BLOB_KINDS)))]
        green = _hue_color(_GREEN_HUE, rng)
        for _attempt in range(50):
            cx, cy = _sample_blob_in_band(rng, width, 0.0, height, green_radius)
            shape = DemoShape(_blob_polygon(green_kind, cx, cy, green_radius), green,
                              'green_blob', green_kind)
            if _boxes_clear(shape.bbox_xyxy, [s.bbox_xyxy for s in shapes]):
                shapes.append(shape)
                break
    return shapes


# --------------------------------------------------------------------------- #
# Rendering.
# --------------------------------------------------------------------------- #
def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A repeated low-saturation texture: stripes, a checkerboard or a dot grid.

    Periodic, so a background patch looks like any other background patch and
    reveals nothing about where it is.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    pattern = int(rng.integers(3))
    period = rng.uniform(4.0, 10.0)
    if pattern == 0:
        angle = rng.uniform(0.0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        mask = (phase % 1.0) < 0.5
    elif pattern == 1:
        cell = int(rng.integers(3, 8))
        mask = ((xx // cell + yy // cell) % 2) == 0
    else:
        half = period / 2
        mask = ((xx % period) - half) ** 2 + ((yy % period) - half) ** 2 < (period / 4) ** 2

    def muted() -> np.ndarray:
        # Grey with a slight tint: far below the saturation of any object colour.
        return rng.uniform(50.0, 200.0) + rng.uniform(-12.0, 12.0, size=3)

    image = np.where(mask[..., None], muted(), muted())
    return np.clip(image, 0, 255)


def _render_image(rng: np.random.Generator, width: int, height: int,
                  shapes: Sequence[DemoShape]) -> Image.Image:
    """Texture, then the shapes, then mild sensor-like noise over everything."""
    image = Image.fromarray(_texture(rng, width, height).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw.polygon([tuple(p) for p in shape.polygon.tolist()], fill=shape.color)
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0.0, 3.0, (height, width, 3))
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def _render_label_map(width: int, height: int, shapes: Sequence[DemoShape]) -> np.ndarray:
    """The uint8 label map of a segmentation image, boundary ring set to 0."""
    canvas = Image.new('L', (width, height), SEG_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        value = DEMO_SEG_CLASSES.index(shape.label) + 1
        draw.polygon([tuple(p) for p in shape.polygon.tolist()], fill=value)
    labels = np.asarray(canvas, dtype=np.uint8).copy()
    # Pixels with a 4-neighbour of another class: JPEG mixes colours there, so
    # they are "other" (ignored), like ADE20K's unlabelled boundaries.
    boundary = np.zeros_like(labels, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    boundary[1:, :] |= vertical
    boundary[:-1, :] |= vertical
    boundary[:, 1:] |= horizontal
    boundary[:, :-1] |= horizontal
    labels[boundary] = SEG_IGNORE_VALUE
    return labels


def _save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format='JPEG', quality=JPEG_QUALITY)


def _save_png(labels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels).save(path, format='PNG')


def _write_json(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + '\n')


def _image_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _TASK_IDS[task], _SPLIT_IDS[split], index])


# --------------------------------------------------------------------------- #
# Writers, one per task.
# --------------------------------------------------------------------------- #
def _write_imagenet(root: Path, seed: int, counts: Dict[str, int]) -> dict:
    meta_lines: Dict[str, List[str]] = {}
    for split, count in counts.items():
        lines = []
        for index in range(count):
            rng = _image_rng(seed, 'imagenet', split, index)
            # Round-robin keeps the classes balanced in every split.
            class_index = index % len(DEMO_CLS_CLASSES)
            class_name = DEMO_CLS_CLASSES[class_index]
            width, height = _sample_image_size(rng)
            shapes = sample_classification_shapes(rng, class_name, width, height)
            relative = f'{class_name}/{class_name}_{index:05d}.jpg'
            _save_jpeg(_render_image(rng, width, height, shapes), root / split / relative)
            lines.append(f'{relative} {class_index}')
        meta_lines[split] = lines
    meta = root / 'meta'
    meta.mkdir(parents=True, exist_ok=True)
    (meta / 'classes.txt').write_text('\n'.join(DEMO_CLS_CLASSES) + '\n')
    for split, lines in meta_lines.items():
        (meta / f'{split}.txt').write_text('\n'.join(lines) + '\n' if lines else '')
    return dict(classes=list(DEMO_CLS_CLASSES), num_images=dict(counts))


def _coco_annotation(shape: DemoShape, ann_id: int, image_id: int) -> dict:
    x0, y0, x1, y1 = shape.bbox_xyxy
    xs, ys = shape.polygon[:, 0], shape.polygon[:, 1]
    # Shoelace formula: the polygon's area, which is what COCO's area means.
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=DEMO_DET_CLASSES.index(shape.label) + 1,
        bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
        area=round(area, 2),
        iscrowd=0,
        segmentation=[[round(float(v), 2) for v in shape.polygon.reshape(-1)]])


def _write_coco(root: Path, seed: int, counts: Dict[str, int]) -> dict:
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(DEMO_DET_CLASSES)]
    num_annotations = {}
    for split, count in counts.items():
        images, annotations = [], []
        id_offset = COCO_VAL_ID_OFFSET if split == 'val' else 0
        for index in range(count):
            rng = _image_rng(seed, 'coco', split, index)
            image_id = id_offset + index + 1
            width, height = _sample_image_size(rng)
            shapes = sample_detection_shapes(rng, width, height)
            file_name = f'{image_id:012d}.jpg'
            _save_jpeg(_render_image(rng, width, height, shapes),
                       root / f'{split}2017' / file_name)
            images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
            for shape in shapes:
                annotations.append(
                    _coco_annotation(shape, id_offset + len(annotations) + 1, image_id))
        _write_json(
            dict(info=dict(description=f'mmsape synthetic demo, {split}',
                           version=str(GENERATOR_VERSION)),
                 licenses=[], images=images, annotations=annotations,
                 categories=categories),
            root / 'annotations' / f'instances_{split}2017.json')
        num_annotations[split] = len(annotations)
    return dict(classes=list(DEMO_DET_CLASSES), num_images=dict(counts),
                num_annotations=num_annotations)


def _write_ade(root: Path, seed: int, counts: Dict[str, int]) -> dict:
    ade = root / 'ADEChallengeData2016'
    folders = {'train': 'training', 'val': 'validation'}
    for split, count in counts.items():
        for index in range(count):
            rng = _image_rng(seed, 'ade', split, index)
            width, height = _sample_image_size(rng)
            shapes = sample_segmentation_shapes(rng, width, height)
            stem = f'ADE_{split}_{index + 1:08d}'
            _save_jpeg(_render_image(rng, width, height, shapes),
                       ade / 'images' / folders[split] / f'{stem}.jpg')
            _save_png(_render_label_map(width, height, shapes),
                      ade / 'annotations' / folders[split] / f'{stem}.png')
    (root / 'classes.txt').write_text('\n'.join(DEMO_SEG_CLASSES) + '\n')
    return dict(classes=list(DEMO_SEG_CLASSES), num_images=dict(counts))


# --------------------------------------------------------------------------- #
# Public entry points.
# --------------------------------------------------------------------------- #
def _expected_manifest(seed: int, num_train: int, num_val: int) -> dict:
    return dict(generator='mmsape.datasets.demo_data', version=GENERATOR_VERSION,
                seed=seed, num_train=num_train, num_val=num_val)


def read_demo_manifest(root: Union[str, Path]) -> Optional[dict]:
    """The manifest of demo data under ``root``, or None if absent or unreadable.

    Args:
        root (str | Path): Output directory of :func:`generate_demo_data`.

    Returns:
        dict, optional: Generator version, seed, counts and per-task statistics;
        ``complete`` is False while (or if interrupted during) generation.
    """
    try:
        manifest = json.loads((Path(root) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_demo_data_current(root: Union[str, Path], seed: int = 0,
                         num_train: int = DEFAULT_NUM_TRAIN,
                         num_val: int = DEFAULT_NUM_VAL) -> bool:
    """Whether ``root`` holds complete demo data of this generator version and settings.

    Args:
        root (str | Path): Output directory of :func:`generate_demo_data`.
        seed (int): Expected seed.
        num_train (int): Expected training images per task.
        num_val (int): Expected validation images per task.

    Returns:
        bool: True when no regeneration is needed.
    """
    manifest = read_demo_manifest(root)
    if manifest is None or not manifest.get('complete', False):
        return False
    expected = _expected_manifest(seed, num_train, num_val)
    return all(manifest.get(key) == value for key, value in expected.items())


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Serialise generators writing to ``root`` (e.g. parallel pytest workers)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent runs are the user's call
        yield
        return
    with open(root / '.demo_data.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _generate(root: Path, seed: int, num_train: int, num_val: int, force: bool) -> Path:
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be positive, '
                         f'got {num_train} and {num_val}')
    if num_train >= COCO_VAL_ID_OFFSET:
        raise ValueError(f'num_train must stay below {COCO_VAL_ID_OFFSET}')
    present = [name for name in _OWNED_ENTRIES if (root / name).exists()]
    # Empty directories (say, made by hand beforehand) hold nothing to protect.
    with_data = [name for name in present
                 if not (root / name).is_dir() or any((root / name).iterdir())]
    if with_data and read_demo_manifest(root) is None and not force:
        # Someone else's data (say a real COCO under <out>/coco): never delete it.
        raise FileExistsError(
            f'{root} holds {with_data} but no {MANIFEST_NAME}; refusing to overwrite data '
            'this generator did not write (use force=True / --force to replace it)')
    for name in present:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    manifest = _expected_manifest(seed, num_train, num_val)
    # Written first as incomplete, so an interrupted run is regenerated next time
    # instead of being mistaken for someone else's data.
    _write_json(dict(manifest, complete=False), root / MANIFEST_NAME)
    counts = {'train': num_train, 'val': num_val}
    tasks = dict(imagenet=_write_imagenet(root / 'imagenet', seed, counts),
                 coco=_write_coco(root / 'coco', seed, counts),
                 ade=_write_ade(root / 'ade', seed, counts))
    tmp = root / (MANIFEST_NAME + '.tmp')
    _write_json(dict(manifest, complete=True, tasks=tasks), tmp)
    os.replace(tmp, root / MANIFEST_NAME)
    return root


def generate_demo_data(out_dir: Union[str, Path], seed: int = 0,
                       num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
                       force: bool = False) -> Path:
    """(Re)generate the three demo datasets under ``out_dir``.

    Replaces earlier demo data there (recognised by its manifest). Other
    entries of ``out_dir`` are left alone.

    Args:
        out_dir (str | Path): Output directory, created if missing.
        seed (int): Seed; the same seed gives byte-identical files.
        num_train (int): Training images per task.
        num_val (int): Validation images per task.
        force (bool): Also replace ``imagenet/``, ``coco/`` and ``ade/`` when no
            manifest shows that this generator wrote them. Defaults to False.

    Returns:
        Path: ``out_dir``.
    """
    root = Path(out_dir)
    with _exclusive(root):
        return _generate(root, seed, num_train, num_val, force)


def ensure_demo_data(root: Union[str, Path], seed: int = 0,
                     num_train: int = DEFAULT_NUM_TRAIN,
                     num_val: int = DEFAULT_NUM_VAL) -> Path:
    """Generate the demo datasets under ``root`` unless up to date already.

    Regenerates when the manifest is missing, incomplete, or records another
    generator version, seed or count.

    Args:
        root (str | Path): Output directory (e.g. ``data/demo``).
        seed (int): Seed.
        num_train (int): Training images per task.
        num_val (int): Validation images per task.

    Returns:
        Path: ``root``.
    """
    root = Path(root)
    if is_demo_data_current(root, seed, num_train, num_val):
        return root
    with _exclusive(root):
        # Another process may have generated it while this one waited for the lock.
        if not is_demo_data_current(root, seed, num_train, num_val):
            _generate(root, seed, num_train, num_val, force=False)
    return root
