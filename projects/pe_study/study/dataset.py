"""The study's segmentation set: classes defined by colour, by the image frame, by a
neighbour's relative position and by similarity to a distant object.

Every image is a textured background with objects at one scale (radii
:data:`RADIUS` pixels), drawn in families that colour tells apart; inside a family
only position, or the rest of the image, tells the classes apart:

* **colour**: ``background``; ``green_blob`` (green, anywhere); ``cyan_anchor``.
* **frame** (absolute position): an orange spot is ``spot_top`` when it lies in the
  upper half of the image, ``spot_bottom`` in the lower half (:func:`frame_label`).
  Spots lie :data:`FRAME_GAP` pixels from the top or the bottom edge: the frame
  must be found, but it is near (a 3x3 convolution with zero
  padding, PEG, sees only one patch beyond a token, so spots anywhere in their
  half would be out of its reach at any training length).
* **relation** (a neighbour's relative position): a violet blob directly above or
  below a ``cyan_anchor`` of the same shape is ``above_anchor`` / ``below_anchor``
  (:func:`relation_label`); the pair sits anywhere, so the frame says nothing.
* **similarity** (a distant object): pastel objects whose identity is their hue
  and shape. An object whose identical twin (same hue, shape and size) lies
  elsewhere in the image, at least :data:`MIN_TWIN_DISTANCE` pixels away, is
  ``twin``; an object whose identity appears nowhere else is ``single``
  (:func:`similarity_labels`). Singles never share a hue with another pastel
  object of their image, so telling the two apart means finding (or not finding)
  the distant twin: the SaPE² paper's "visually similar but spatially distant
  patches".

Sizes. Training images are :data:`TRAIN_CANVAS` pixels with :data:`UNIT_CONTENT`
objects. The padded evaluation sets are larger canvases with objects at the
*same* scale and the same density (object counts grow with the area: the grid
grows, the content scale does not); the twin family is capped at
:data:`NUM_HUES` identities per image (at 3x this thins it to 2/3 of the training
density, the same for every encoding). The resized evaluation scales the 1x
validation images instead (the content grows with the grid).
"""
import colorsys
import json
import math
import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from mmsape.testing.demo_data import DemoShape
from mmsape.testing.demo_data.rendering import render_image, render_label_map

#: Classes in label order (PNG value = index + 1; 0 marks ignored boundary pixels).
CLASSES = ('background', 'green_blob', 'cyan_anchor', 'spot_top', 'spot_bottom',
           'above_anchor', 'below_anchor', 'twin', 'single')
PALETTE = [[120, 120, 120], [0, 200, 0], [0, 220, 220], [255, 140, 0], [140, 70, 20],
           [220, 20, 60], [30, 144, 255], [255, 105, 180], [148, 0, 211]]
#: What defines each class: the study's class groups.
CLASS_GROUPS = {
    'colour': ('background', 'green_blob', 'cyan_anchor'),
    'frame': ('spot_top', 'spot_bottom'),
    'relation': ('above_anchor', 'below_anchor'),
    'similarity': ('twin', 'single'),
}
#: (height, width) of the training images, in pixels.
TRAIN_CANVAS = (96, 96)
#: Object radius range (pixels): 2 to 3 patches of 8 pixels across.
RADIUS = (8.0, 11.0)
#: Objects per training-canvas area: frame spots, relation pairs, twin pairs,
#: singles, green blobs (the last drawn from 0..n).
UNIT_CONTENT = dict(spots=1, pairs=2, twins=1, singles=1, greens=1)
#: Pixels between a frame spot and the top or bottom edge (uniform in this range).
FRAME_GAP = (2.0, 5.0)
#: Radius of every pastel object: a twin pair covers twice a single's area.
PASTEL_RADIUS = 9.5
#: Pastel identities: hues (equally spaced) times shapes.
NUM_HUES = 12
KINDS = ('disc', 'square', 'diamond')
MIN_TWIN_DISTANCE = 40.0
#: Pixels kept free between two objects (an anchor and its blob: 1 to 4).
GAP = 4.0
MARGIN = 2.0

_FRAME_HUE, _RELATION_HUE, _GREEN_HUE, _CYAN_HUE = (15., 45.), (255., 290.), (110., 130.), \
    (180., 190.)
_DISC_VERTICES = 24


@dataclass(frozen=True)
class EvalSet:
    """A validation set: ``folder`` under ``images/`` and ``annotations/``, its
    canvas ``(height, width)``, how many images, and its scale / aspect relative
    to the training canvas."""
    name: str
    canvas: Tuple[int, int]
    num_images: int

    @property
    def scale(self) -> float:
        return math.sqrt(self.canvas[0] * self.canvas[1] / (TRAIN_CANVAS[0] * TRAIN_CANVAS[1]))

    @property
    def aspect(self) -> float:
        return (self.canvas[1] / self.canvas[0]) / (TRAIN_CANVAS[1] / TRAIN_CANVAS[0])


def hsv(hue: float, saturation: float, value: float) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue % 360.) / 360., saturation, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def polygon(kind: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """A disc, square or diamond of ``radius`` around ``(cx, cy)`` (pixels)."""
    if kind == 'disc':
        angles = 2 * np.pi * np.arange(_DISC_VERTICES) / _DISC_VERTICES
        offsets = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif kind == 'square':
        offsets = 0.9 * radius * np.array([[-1., -1.], [1., -1.], [1., 1.], [-1., 1.]])
    elif kind == 'diamond':
        offsets = 1.2 * radius * np.array([[0., -1.], [1., 0.], [0., 1.], [-1., 0.]])
    else:
        raise ValueError(f'unknown kind {kind!r}; use one of {KINDS}')
    return np.round(offsets + np.array([cx, cy]), 2)


def frame_label(center_y: float, height: float) -> str:
    """A spot's class: the half of the image frame its centre lies in."""
    return 'spot_top' if center_y < height / 2 else 'spot_bottom'


def relation_label(center_y: float, anchor_center_y: float) -> str:
    """A relation blob's class: the side of its anchor it sits on."""
    if center_y == anchor_center_y:
        raise ValueError('a relation blob sits above or below its anchor')
    return 'above_anchor' if center_y < anchor_center_y else 'below_anchor'


def similarity_labels(identities: Sequence[Tuple[int, str, float]]) -> List[str]:
    """``twin`` for each pastel object whose identity (hue, shape, radius) another
    object of the image has, else ``single``."""
    return ['twin' if sum(other == ident for other in identities) > 1 else 'single'
            for ident in identities]


def _box(shape: DemoShape, gap: float) -> Tuple[float, float, float, float]:
    x0, y0, x1, y1 = shape.bbox_xyxy
    return x0 - gap, y0 - gap, x1 + gap, y1 + gap


def _overlaps(box, boxes) -> bool:
    x0, y0, x1, y1 = box
    return any(not (x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0) for a0, b0, a1, b1 in boxes)


class _Placer:
    """Places objects without overlap (each box grown by :data:`GAP` / 2)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.height, self.width = rng, height, width
        self.shapes: List[DemoShape] = []
        self.boxes: List[Tuple[float, float, float, float]] = []

    def free(self, *shapes: DemoShape) -> bool:
        boxes = [_box(s, GAP / 2) for s in shapes]
        inside = all(s.bbox_xyxy[0] >= MARGIN and s.bbox_xyxy[1] >= MARGIN
                     and s.bbox_xyxy[2] <= self.width - MARGIN
                     and s.bbox_xyxy[3] <= self.height - MARGIN for s in shapes)
        return inside and not any(_overlaps(b, self.boxes) for b in boxes)

    def add(self, *shapes: DemoShape) -> None:
        self.shapes.extend(shapes)
        self.boxes.extend(_box(s, GAP / 2) for s in shapes)

    def centre(self, radius: float, y_range: Optional[Tuple[float, float]] = None
               ) -> Tuple[float, float]:
        reach = 1.2 * radius + MARGIN
        y_low, y_high = y_range or (0., float(self.height))
        cx = self.rng.uniform(reach, self.width - reach)
        cy = self.rng.uniform(y_low + reach, max(y_low + reach, y_high - reach))
        return cx, cy

    def try_place(self, make, attempts: int = 100) -> bool:
        """``make()`` proposes shapes until they fit; False if none did."""
        for _ in range(attempts):
            shapes = make()
            if shapes and self.free(*shapes):
                self.add(*shapes)
                return True
        return False


def _counts(height: int, width: int, rng: np.random.Generator) -> Dict[str, int]:
    """Object counts of a canvas: the unit content times its area (in training
    canvases), rounded at random so the expectation is exact."""
    units = height * width / (TRAIN_CANVAS[0] * TRAIN_CANVAS[1])
    counts = {}
    for key, per_unit in UNIT_CONTENT.items():
        expected = per_unit * units
        counts[key] = int(math.floor(expected) + (rng.uniform() < expected % 1))
    counts['greens'] = int(rng.integers(0, counts['greens'] + 1))
    # Singles take hues of their own: at least one hue is left for the twins.
    counts['singles'] = min(counts['singles'], NUM_HUES - 1)
    return counts


def sample_shapes(rng: np.random.Generator, height: int, width: int) -> List[DemoShape]:
    """The labelled objects of one ``height x width`` image (see the module docstring)."""
    placer = _Placer(rng, height, width)
    counts = _counts(height, width, rng)

    def radius() -> float:
        return float(rng.uniform(*RADIUS))

    def kind() -> str:
        return KINDS[int(rng.integers(len(KINDS)))]

    # Relation pairs first (the largest footprint): a violet blob straight above
    # or below a cyan anchor of the same shape and size, 1..4 pixels apart.
    for _ in range(counts['pairs']):
        def pair():
            r, k = radius(), kind()
            reach = 1.2 * r if k == 'diamond' else r
            dy = 2 * reach + rng.uniform(1., 4.)
            dx = rng.uniform(-0.25, 0.25) * r
            cx, cy = placer.centre(r)
            anchor_cy = cy + dy if rng.integers(2) else cy - dy
            return [DemoShape(polygon(k, cx, cy, r), hsv(rng.uniform(*_RELATION_HUE),
                                                         rng.uniform(.75, 1.), rng.uniform(.8, 1.)),
                              relation_label(cy, anchor_cy), k),
                    DemoShape(polygon(k, cx + dx, anchor_cy, r),
                              hsv(rng.uniform(*_CYAN_HUE), rng.uniform(.75, 1.),
                                  rng.uniform(.8, 1.)), 'cyan_anchor', k)]
        placer.try_place(pair)
    # Twin pairs and singles: pastel identities (hue, shape). Every single has a hue
    # no other object of the image has; pairs share the remaining hues, with
    # different shapes where they must share one (then the pair is the two objects
    # of the same shape).
    hue_bins = rng.permutation(NUM_HUES)
    single_bins, pair_bins = hue_bins[:counts['singles']], hue_bins[counts['singles']:]
    combos = [(int(b), k) for b in pair_bins for k in KINDS]
    combos = [combos[i] for i in rng.permutation(len(combos))]
    offset = rng.uniform(0., 360. / NUM_HUES)
    pastel = [(combos[i % len(combos)], True) for i in range(counts['twins'])]
    pastel += [((int(b), kind()), False) for b in single_bins]
    for (hue_bin, k), is_pair in pastel:
        colour = hsv(offset + hue_bin * 360. / NUM_HUES, rng.uniform(.35, .45),
                     rng.uniform(.92, 1.))
        if is_pair:
            placer.try_place(lambda k=k, colour=colour: _twins(placer, k, colour), attempts=300)
        else:
            placer.try_place(lambda k=k, colour=colour: [DemoShape(
                polygon(k, *placer.centre(PASTEL_RADIUS), PASTEL_RADIUS), colour, 'single', k)])
    # Frame spots: a few pixels from the top or the bottom edge.
    for _ in range(counts['spots']):
        def spot():
            r, k = radius(), kind()
            half_height = (polygon(k, 0., 0., r)[:, 1].max())
            gap = rng.uniform(*FRAME_GAP)
            cy = gap + half_height if rng.integers(2) else height - gap - half_height
            cx, _ = placer.centre(r)
            colour = hsv(rng.uniform(*_FRAME_HUE), rng.uniform(.75, 1.), rng.uniform(.85, 1.))
            return [DemoShape(polygon(k, cx, cy, r), colour, frame_label(cy, height), k)]
        placer.try_place(spot)
    for _ in range(counts['greens']):
        def green():
            r, k = radius(), kind()
            return [DemoShape(polygon(k, *placer.centre(r), r),
                              hsv(rng.uniform(*_GREEN_HUE), rng.uniform(.75, 1.),
                                  rng.uniform(.75, 1.)), 'green_blob', k)]
        placer.try_place(green)
    return _relabel_similarity(placer.shapes)


def _twins(placer: _Placer, kind: str, colour) -> Optional[List[DemoShape]]:
    """Two identical pastel objects at least :data:`MIN_TWIN_DISTANCE` apart."""
    (ax, ay), (bx, by) = placer.centre(PASTEL_RADIUS), placer.centre(PASTEL_RADIUS)
    if math.hypot(ax - bx, ay - by) < MIN_TWIN_DISTANCE:
        return None
    return [DemoShape(polygon(kind, x, y, PASTEL_RADIUS), colour, 'twin', kind)
            for x, y in ((ax, ay), (bx, by))]


def _relabel_similarity(shapes: List[DemoShape]) -> List[DemoShape]:
    """Name pastel objects by :func:`similarity_labels` (a twin whose partner did not
    fit becomes a single)."""
    pastel = [i for i, s in enumerate(shapes) if s.label in ('twin', 'single')]
    identities = [(shapes[i].color, shapes[i].kind, _radius_of(shapes[i])) for i in pastel]
    for i, label in zip(pastel, similarity_labels(identities)):
        shapes[i] = DemoShape(shapes[i].polygon, shapes[i].color, label, shapes[i].kind)
    return shapes


def _radius_of(shape: DemoShape) -> float:
    x0, _, x1, _ = shape.bbox_xyxy
    return round(x1 - x0, 2)


def write_image(root: str, folder: str, index: int, rng: np.random.Generator,
                height: int, width: int) -> List[DemoShape]:
    """Draw one image and its label map into ``<root>/{images,annotations}/<folder>``."""
    shapes = sample_shapes(rng, height, width)
    stem = f'{folder}_{index:05d}'
    image = render_image(rng, width, height, shapes)
    labels = render_label_map(width, height, shapes, CLASSES)
    for sub, array in (('images', np.asarray(image)), ('annotations', labels)):
        os.makedirs(osp.join(root, sub, folder), exist_ok=True)
        Image.fromarray(array).save(osp.join(root, sub, folder, f'{stem}.png'))
    return shapes


def generate(root: str, num_train: int, eval_sets: Sequence[EvalSet], seed: int = 0) -> dict:
    """Write the training images and every evaluation set under ``root`` (ADE20K
    layout, PNG images and label maps; ``objects/<folder>.json`` lists each image's
    objects: label, shape, colour, polygon); return the manifest, also saved as
    ``<root>/manifest.json``. A folder with the same manifest is left as it is."""
    manifest = dict(version=4, seed=seed, num_train=num_train, train_canvas=TRAIN_CANVAS,
                    classes=CLASSES, unit_content=UNIT_CONTENT, radius=RADIUS,
                    eval_sets=[dict(name=s.name, canvas=s.canvas, num_images=s.num_images)
                               for s in eval_sets])
    manifest = json.loads(json.dumps(manifest))
    path = osp.join(root, 'manifest.json')
    if osp.exists(path):
        with open(path) as file:
            if json.load(file).get('settings') == manifest:
                return manifest
    stats: Dict[str, Dict[str, int]] = {}
    os.makedirs(osp.join(root, 'objects'), exist_ok=True)
    splits = [('training', TRAIN_CANVAS, num_train)] + [(s.name, s.canvas, s.num_images)
                                                        for s in eval_sets]
    for split_index, (folder, (height, width), count) in enumerate(splits):
        counts = dict.fromkeys(CLASSES[1:], 0)
        objects = {}
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            shapes = write_image(root, folder, index, rng, height, width)
            for shape in shapes:
                counts[shape.label] += 1
            objects[f'{folder}_{index:05d}'] = [
                dict(label=s.label, kind=s.kind, color=list(s.color),
                     polygon=s.polygon.tolist()) for s in shapes]
        stats[folder] = counts
        with open(osp.join(root, 'objects', f'{folder}.json'), 'w') as file:
            json.dump(objects, file)
    with open(path, 'w') as file:
        json.dump(dict(settings=manifest, objects=stats), file, indent=1)
    return manifest
