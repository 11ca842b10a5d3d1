"""What each demo image holds: class names, label rules, and the sampled shapes.

The label rules (:func:`classification_layout_label`, :func:`detection_disc_label`,
:func:`segmentation_pair_labels`) are the single source of truth the generator
follows and the tests check.
"""
import colorsys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

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

MIN_SIDE, MAX_SIDE = 48, 160

# Hue ranges (degrees). Layout objects never use the reserved easy-class hues,
# so colour says nothing about a layout class.
_LAYOUT_HUES = ((-50.0, 45.0), (220.0, 280.0))
_GREEN_HUE = (112.0, 128.0)
_CYAN_HUE = (180.0, 190.0)
_BLOB_KINDS = ('disc', 'square', 'diamond')
_DISC_VERTICES = 24  # a multiple of 4: the polygon is symmetric under transposition
_MARGIN = 1.0  # pixels kept free between an object and the image border
_GAP = 2.0  # pixels kept free between two objects' boxes

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
def sample_image_size(rng: np.random.Generator) -> Tuple[int, int]:
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
