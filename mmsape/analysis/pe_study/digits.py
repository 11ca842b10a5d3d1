"""The study's digits part: scikit-learn's 8x8 handwritten digits on a canvas,
one small :class:`~mmsape.models.PosEncViT` per encoding trained with a plain
PyTorch loop, then measured at other sizes, under translation and for per-block
equivariance (see :mod:`mmsape.analysis.pe_study`)."""
import copy
import math
import time
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsape.analysis.encodings import COMPARED_ENCODINGS
from mmsape.analysis.equivariance import featmap_equivariance, logit_invariance
from mmsape.models import PosEncViT

DIGIT_SIZE, CANVAS, PATCH = 16, 24, 4
DIGIT_EVAL_SIZES = [(16, 16), (24, 24), (32, 32), (48, 48), (24, 48), (48, 24)]
# Protocols: 'resize' scales the whole canvas (content and grid, as in the CPVT /
# RoPE-ViT tables); 'pad' keeps the digit's pixels and changes only the canvas
# (and so the grid) around it: position handling alone.
PROTOCOLS = {'resize': 'acc', 'pad': 'pad_acc'}


def digits_canvases(seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train / test canvases ``(N, 1, CANVAS, CANVAS)`` in [-1, 1] and labels (fixed split)."""
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
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 256) -> float:
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


def fit_digits(model: nn.Module, images: Tensor, labels: Tensor, epochs: int, seed: int,
               augment: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None
               ) -> Tuple[float, float]:
    """Train ``model`` with the study's recipe: AdamW 2e-3 (weight decay 0.05 on
    the matrices outside the position encoding), one warm-up epoch then cosine,
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
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and 'pos_encoding' not in n]
    no_decay = [p for n, p in model.named_parameters()
                if not (p.ndim > 1 and 'pos_encoding' not in n)]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=0.05),
                                   dict(params=no_decay, weight_decay=0.)], lr=2e-3)
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


def train_digits(name: str, seed: int, epochs: int, quick: bool, data) -> dict:
    """Train one encoding on digits; return all its measurements."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    pos_encoding, extra = COMPARED_ENCODINGS[name]
    model = DigitsViT(pos_encoding, extra, quick)
    params = sum(p.numel() for p in model.parameters())
    train_s, final_loss = fit_digits(model, x_train, y_train, epochs, seed)
    model.eval()
    result = dict(encoding=name, seed=seed, params=params, train_s=train_s,
                  final_loss=final_loss, acc={}, pad_acc={}, shifted_acc={})
    for size in DIGIT_EVAL_SIZES:
        key = f'{size[0]}x{size[1]}'
        result['acc'][key] = accuracy(model, resize_canvas(x_test, size), y_test)
        result['pad_acc'][key] = accuracy(model, pad_canvas(x_test, size), y_test)
    for dy, dx in ((PATCH, PATCH), (-PATCH, PATCH), (0, PATCH // 2)):
        result['shifted_acc'][f'{dy},{dx}'] = accuracy(model, translate(x_test, dy, dx), y_test)
    probe = x_test[:128]
    shifts = [(PATCH, PATCH), (2 * PATCH, 0), (0, PATCH // 2)]
    rows = featmap_equivariance(model.backbone, probe, shifts, 'circular')
    rows += featmap_equivariance(model.backbone, probe, [(PATCH, PATCH)], 'crop')
    for row in rows[-model.backbone.num_layers:]:
        row['mode'] = 'crop'
    result['equivariance'] = rows
    result['logits'] = logit_invariance(model, probe, shifts, PATCH, 'circular')
    return result
