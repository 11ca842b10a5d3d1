"""The study's digits part: scikit-learn's 8x8 handwritten digits on a canvas,
one small :class:`~mmsape.models.PosEncViT` per encoding trained with a plain
PyTorch loop, then measured at other sizes, under translation and for per-block
equivariance (see :mod:`projects.pe_study.study`)."""
import copy
import functools
import math
import time
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsape.analysis.equivariance import featmap_equivariance, logit_invariance
from mmsape.models import PosEncViT

from .encodings import row_settings

DIGIT_SIZE, CANVAS, PATCH = 16, 24, 4
#: The extrapolation protocol's sizes: 1x, 1.5x, 2x and 3x the training canvas.
DIGIT_SCALES = (1.0, 1.5, 2.0, 3.0)
DIGIT_EVAL_SIZES = [(16, 16), (24, 24), (36, 36), (48, 48), (72, 72), (24, 48), (48, 24)]
# Protocols: 'resize' scales the whole canvas (content and grid, as in the CPVT /
# RoPE-ViT tables); 'pad' keeps the digit's pixels and changes only the canvas
# (and so the grid) around it: position handling alone.
PROTOCOLS = {'resize': 'acc', 'pad': 'pad_acc'}
#: Training protocols: 'centred' trains on the centred canvases (a digit's place
#: is then a shortcut for absolute position), 'shifted' moves every training
#: digit by its own random whole-pixel offset of up to MAX_SHIFT per axis, drawn
#: afresh each epoch (the random-translation augmentation of every vision recipe,
#: e.g. CIFAR's pad-4 random crop): the digit can sit anywhere on the canvas.
TRAINING_PROTOCOLS = ('centred', 'shifted')
MAX_SHIFT = (CANVAS - DIGIT_SIZE) // 2
#: The shifts of the 'shift' columns, in pixels (dy, dx): one patch diagonally
#: both ways, and half a patch horizontally.
EVAL_SHIFTS = ((PATCH, PATCH), (-PATCH, PATCH), (0, PATCH // 2))


def size_key(size: Tuple[int, int]) -> str:
    """``(24, 48)`` -> ``'24x48'``, the key of a size in the results."""
    return f'{size[0]}x{size[1]}'


@functools.lru_cache(maxsize=2)
def digits_canvases(seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train / test canvases ``(N, 1, CANVAS, CANVAS)`` in [-1, 1] and labels (fixed
    split). Cached per process (every job of a worker reuses them): read only."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.
    labels = torch.tensor(digits.target)
    images = F.interpolate(images, size=(DIGIT_SIZE, DIGIT_SIZE), mode='bilinear',
                           align_corners=False)
    margin = (CANVAS - DIGIT_SIZE) // 2
    images = F.pad(images, (margin, ) * 4) * 2 - 1
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.25,
                                           random_state=seed, stratify=labels.numpy())
    return (images[idx_train], labels[idx_train], images[idx_test], labels[idx_test])


class DigitsViT(nn.Module):
    """PosEncViT + linear head, the same for every encoding."""

    def __init__(self, pos_encoding, extra: dict, quick: bool = False) -> None:
        super().__init__()
        dims = 32 if quick else 64
        self.backbone = PosEncViT(
            arch=dict(embed_dims=dims, num_layers=2 if quick else 4, num_heads=4,
                      feedforward_channels=2 * dims),
            img_size=CANVAS, patch_size=PATCH, in_channels=1,
            pos_encoding=copy.deepcopy(pos_encoding), **extra)
        self.head = nn.Linear(dims, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x)[-1])


def resize_canvas(images: Tensor, size: Tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode='bilinear', align_corners=False,
                         antialias=True)


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 32) -> float:
    """Top-1 % in batches of ``batch`` (small batches keep the attention tensors
    of large grids in cache: a third less CPU time at 72x72 than batches of 256)."""
    correct = 0
    for start in range(0, len(labels), batch):
        logits = model(images[start:start + batch])
        correct += (logits.argmax(1) == labels[start:start + batch]).sum().item()
    return 100. * correct / len(labels)


def pad_canvas(images: Tensor, size: Tuple[int, int]) -> Tensor:
    """Centre the canvases in a background canvas of ``size`` (centre crop if smaller)."""
    height, width = images.shape[-2:]
    out = torch.full((*images.shape[:-2], *size), -1.)
    dy, dx = (size[0] - height) // 2, (size[1] - width) // 2
    src = images[..., max(0, -dy):max(0, -dy) + min(height, size[0]),
                 max(0, -dx):max(0, -dx) + min(width, size[1])]
    out[..., max(0, dy):max(0, dy) + src.shape[-2], max(0, dx):max(0, dx) + src.shape[-1]] = src
    return out


def translate(images: Tensor, dy: int, dx: int) -> Tensor:
    """Shift canvases by pixels, filling with background (-1): a real translation."""
    out = torch.full_like(images, -1.)
    height, width = images.shape[-2:]
    src = images[..., max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
    out[..., max(0, dy):max(0, dy) + src.shape[-2], max(0, dx):max(0, dx) + src.shape[-1]] = src
    return out


def random_translate(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each canvas translated by its own ``(dy, dx)``, uniform integers in
    ``[-max_shift, max_shift]``, background (-1) filling: :func:`translate` per image."""
    shifts = torch.randint(-max_shift, max_shift + 1, (len(images), 2), generator=generator)
    return torch.stack([translate(image, dy, dx)
                        for image, (dy, dx) in zip(images, shifts.tolist())])


def param_groups(model: nn.Module, weight_decay: float) -> list:
    """AdamW groups: decay on weight matrices, none on biases, norms and what the
    backbone declares in ``no_weight_decay()`` (prefix tokens, position tables)."""
    declared = {f'backbone.{name}' for name in model.backbone.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim > 1 and name not in declared else no_decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay),
            dict(params=no_decay, weight_decay=0.)]


def fit_digits(model: nn.Module, images: Tensor, labels: Tensor, epochs: int, seed: int,
               augment: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None
               ) -> Tuple[float, float]:
    """Train ``model`` with the study's recipe: AdamW 2e-3 (weight decay 0.05 on
    the weight matrices, none on what the backbone declares in
    ``no_weight_decay()``: :func:`param_groups`), one warm-up epoch then cosine,
    label smoothing 0.1, gradient clipping at 1, batches of 32.

    Args:
        model (nn.Module): The classifier, e.g. :class:`DigitsViT`.
        images (Tensor): ``(N, 1, H, W)`` training canvases.
        labels (Tensor): ``(N, )`` classes.
        epochs (int): Passes over the training set.
        seed (int): Seed of the batch order (and of ``augment``).
        augment (callable, optional): ``augment(images, generator)`` gives each
            epoch's canvases, e.g. the digits at random places. Defaults to None.

    Returns:
        tuple[float, float]: Training seconds and the last batch's loss.
    """
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=2e-3)
    batch = 32
    steps_per_epoch = math.ceil(len(labels) / batch)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else
        0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    model.train()
    for _ in range(epochs):
        epoch_images = images if augment is None else augment(images, generator)
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(epoch_images[idx]), labels[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
    return time.time() - start, loss.item()


def shift_anywhere(images: Tensor, generator: torch.Generator) -> Tensor:
    """The 'shifted' training protocol's augmentation: every digit moved by up to
    :data:`MAX_SHIFT` pixels per axis, i.e. anywhere on the canvas."""
    return random_translate(images, MAX_SHIFT, generator)


def train_digits(name: str, seed: int, epochs: int, quick: bool, data,
                 training: str = 'centred') -> dict:
    """Train one encoding on digits under a training protocol (one of
    :data:`TRAINING_PROTOCOLS`); return all its measurements."""
    if training not in TRAINING_PROTOCOLS:
        raise ValueError(f'training={training!r} is not one of {TRAINING_PROTOCOLS}.')
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    pos_encoding, extra = row_settings(name)
    model = DigitsViT(pos_encoding, extra, quick)
    params = sum(p.numel() for p in model.parameters())
    start, start_cpu = time.time(), time.process_time()
    train_s, final_loss = fit_digits(model, x_train, y_train, epochs, seed,
                                     shift_anywhere if training == 'shifted' else None)
    train_cpu_s = time.process_time() - start_cpu
    model.eval()
    result = dict(encoding=name, seed=seed, training=training, params=params,
                  train_s=train_s, train_cpu_s=train_cpu_s, final_loss=final_loss, acc={},
                  pad_acc={}, shifted_acc={})
    for size in DIGIT_EVAL_SIZES:
        result['acc'][size_key(size)] = accuracy(model, resize_canvas(x_test, size), y_test)
        result['pad_acc'][size_key(size)] = accuracy(model, pad_canvas(x_test, size), y_test)
    for dy, dx in EVAL_SHIFTS:
        result['shifted_acc'][f'{dy},{dx}'] = accuracy(model, translate(x_test, dy, dx), y_test)
    probe = x_test[:128]
    shifts = [(PATCH, PATCH), (2 * PATCH, 0), (0, PATCH // 2)]
    rows = featmap_equivariance(model.backbone, probe, shifts, 'circular')
    rows += featmap_equivariance(model.backbone, probe, [(PATCH, PATCH)], 'crop')
    for row in rows[-model.backbone.num_layers:]:
        row['mode'] = 'crop'
    result['equivariance'] = rows
    result['logits'] = logit_invariance(model, probe, shifts, PATCH, 'circular')
    result['total_s'] = time.time() - start
    result['total_cpu_s'] = time.process_time() - start_cpu
    return result
