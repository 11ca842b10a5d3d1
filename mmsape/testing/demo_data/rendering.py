"""Drawing the demo images and segmentation label maps from their shapes."""
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .shapes import DEMO_SEG_CLASSES, SEG_BACKGROUND, SEG_IGNORE_VALUE, DemoShape


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


def render_image(rng: np.random.Generator, width: int, height: int,
                  shapes: Sequence[DemoShape]) -> Image.Image:
    """Texture, then the shapes, then mild sensor-like noise over everything."""
    image = Image.fromarray(_texture(rng, width, height).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw.polygon([tuple(p) for p in shape.polygon.tolist()], fill=shape.color)
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0.0, 3.0, (height, width, 3))
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def render_label_map(width: int, height: int, shapes: Sequence[DemoShape]) -> np.ndarray:
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
