"""Translation-equivariance scores of a :class:`~mmsape.models.PosEncViT`.

Definitions (used by ``tools/analysis/equivariance.py`` and the PE study):

* An input ``x`` of ``H x W`` pixels (a multiple of the patch ``p``) is shifted
  by ``(dy, dx)`` pixels, either

  - ``'circular'``: ``torch.roll(x, (dy, dx))``, pixels leaving one side enter at
    the other, so no content is lost and the grid stays ``H/p x W/p``; or
  - ``'crop'``: two overlapping windows of ``x``, ``x[dy:, dx:]`` and
    ``x[:H-dy, :W-dx]`` (whole-patch shifts only), i.e. a real translation with
    new content at one border and lost content at the other.

* For every block ``l`` the backbone's patch feature map ``F_l`` (``out_type
  'featmap'``) of the shifted input is compared with the *expected* map, the
  unshifted input's map moved by ``(dy/p, dx/p)`` cells: a roll for whole-patch
  circular shifts, a linear interpolation between the two neighbouring rolls for
  sub-patch circular shifts, and the overlapping cells for crops.

* Two scores per block, both 1.0 for an exactly equivariant layer:

  - ``cosine``: mean over images and compared cells of the cosine similarity of
    the two C-dimensional token features;
  - ``rel_score``: ``1 - ||F_shifted - F_expected|| / ||F_expected||`` (Frobenius
    norms over the compared cells), which also sees changes of feature norm.

* For classifiers, the invariance of the output: ``logit_cosine`` (cosine of the
  shifted and unshifted logit vectors) and ``top1_agreement`` (fraction of
  images whose predicted class does not change).

A ViT without position encoding is permutation-equivariant over its patch tokens
(the class token is permutation-invariant), so with whole-patch circular shifts
its features roll exactly and both scores are 1.0 up to float rounding; a
learned APE breaks this and scores lower.
"""
import math
import tempfile
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SHIFT_MODES = ('circular', 'crop')


@contextmanager
def all_block_featmaps(backbone: nn.Module) -> Iterator[nn.Module]:
    """Temporarily make a PosEncViT return the ``(B, C, H, W)`` map of every block."""
    saved = backbone.out_type, backbone.out_indices
    backbone.out_type = 'featmap'
    backbone.out_indices = tuple(range(backbone.num_layers))
    try:
        yield backbone
    finally:
        backbone.out_type, backbone.out_indices = saved


def crop_to_patch_multiple(images: Tensor, patch_size: int) -> Tensor:
    """Crop ``(B, C, H, W)`` bottom/right to multiples of the patch.

    Needed because the backbone pads other sizes bottom/right, and a rolled
    padding strip would break equivariance for reasons unrelated to the encoding.
    """
    height = images.shape[-2] // patch_size * patch_size
    width = images.shape[-1] // patch_size * patch_size
    if height == 0 or width == 0:
        raise ValueError(f'Images of {tuple(images.shape[-2:])} pixels are smaller than '
                         f'one {patch_size}-pixel patch.')
    return images[..., :height, :width]


def fractional_roll(feature_map: Tensor, shift_y: float, shift_x: float) -> Tensor:
    """Circularly shift ``(B, C, H, W)`` by a possibly fractional number of cells.

    A fractional shift ``s = n + a`` (``0 <= a < 1``) is the linear interpolation
    ``(1 - a) roll(n) + a roll(n + 1)`` along each axis.
    """
    for dim, shift in ((-2, shift_y), (-1, shift_x)):
        whole = math.floor(shift)
        frac = shift - whole
        rolled = torch.roll(feature_map, whole, dims=dim)
        if frac > 0:
            rolled = (1 - frac) * rolled + frac * torch.roll(feature_map, whole + 1, dims=dim)
        feature_map = rolled
    return feature_map


def shifted_views(images: Tensor, shift: Tuple[int, int],
                  mode: str) -> Tuple[Tensor, Tensor]:
    """The (reference, shifted) inputs of one shift, see the module docstring."""
    dy, dx = shift
    if mode == 'circular':
        return images, torch.roll(images, (dy, dx), dims=(-2, -1))
    if mode == 'crop':
        if dy < 0 or dx < 0:
            raise ValueError(f"mode='crop' takes non-negative shifts, got {shift}.")
        height, width = images.shape[-2:]
        if dy >= height or dx >= width:
            raise ValueError(f'Shift {shift} leaves no overlap in a {height}x{width} image.')
        # Content at (i, j) of `reference` is at (i + dy, j + dx) of `shifted`.
        return images[..., dy:, dx:], images[..., :height - dy, :width - dx]
    raise ValueError(f'mode={mode!r} is not one of {SHIFT_MODES}.')


def expected_and_actual(ref_map: Tensor, shifted_map: Tensor, shift_cells: Tuple[float, float],
                        mode: str) -> Tuple[Tensor, Tensor]:
    """The compared cells ``(B, C, h, w)`` of the expected and the actual maps."""
    sy, sx = shift_cells
    if mode == 'circular':
        return fractional_roll(ref_map, sy, sx), shifted_map
    ky, kx = int(sy), int(sx)
    height, width = ref_map.shape[-2:]
    # shifted[a + ky, b + kx] shows what reference shows at [a, b].
    return (ref_map[..., :height - ky, :width - kx], shifted_map[..., ky:, kx:])


def similarity_scores(expected: Tensor, actual: Tensor) -> Dict[str, Tensor]:
    """Per-image cosine and relative-error scores of ``(B, C, h, w)`` maps.

    Returns:
        dict: ``cosine`` and ``rel_score``, each ``(B,)`` float64.
    """
    expected, actual = expected.double(), actual.double()
    cosine = F.cosine_similarity(expected, actual, dim=1, eps=1e-12).flatten(1).mean(1)
    error = (actual - expected).flatten(1).norm(dim=1)
    rel_score = 1 - error / expected.flatten(1).norm(dim=1).clamp(min=1e-12)
    return dict(cosine=cosine, rel_score=rel_score)


def pixel_shifts(patch_size: int, patch_shifts: Sequence[int],
                 sub_patch_offsets: Sequence[int] = ()) -> List[Tuple[int, int]]:
    """Diagonal pixel shifts ``(k*p, k*p)`` and horizontal sub-patch ones ``(0, o)``."""
    shifts = [(k * patch_size, k * patch_size) for k in patch_shifts]
    shifts += [(0, o) for o in sub_patch_offsets if o % patch_size]
    return shifts


@torch.no_grad()
def featmap_equivariance(backbone: nn.Module,
                         images: Tensor,
                         shifts: Sequence[Tuple[int, int]],
                         mode: str = 'circular') -> List[dict]:
    """Per-block equivariance scores of a PosEncViT for each pixel shift.

    Args:
        backbone (nn.Module): A :class:`~mmsape.models.PosEncViT` (eval mode is
            the caller's business; dropout would make every score noisy).
        images (Tensor): ``(B, C, H, W)`` normalised inputs; cropped to patch
            multiples here.
        shifts (Sequence[tuple[int, int]]): ``(dy, dx)`` shifts in pixels.
        mode (str): ``'circular'`` or ``'crop'`` (whole patches only).

    Returns:
        list[dict]: One row per (shift, block): ``shift_y``, ``shift_x`` (pixels),
        ``shift_patches`` (largest |shift| in patches), ``layer``, ``cosine``,
        ``rel_score`` (means over the images) and ``num_images``.
    """
    patch = backbone.patch_size
    images = crop_to_patch_multiple(images, patch)
    rows = []
    with all_block_featmaps(backbone):
        for dy, dx in shifts:
            if mode == 'crop' and (dy % patch or dx % patch):
                raise ValueError(f"mode='crop' compares whole patches; shift {(dy, dx)} is "
                                 f'not a multiple of the patch size {patch}.')
            reference, shifted = shifted_views(images, (dy, dx), mode)
            ref_maps = backbone(reference)
            shifted_maps = backbone(shifted)
            for layer, (ref_map, shifted_map) in enumerate(zip(ref_maps, shifted_maps)):
                expected, actual = expected_and_actual(
                    ref_map, shifted_map, (dy / patch, dx / patch), mode)
                scores = similarity_scores(expected, actual)
                rows.append(dict(
                    shift_y=dy, shift_x=dx,
                    shift_patches=max(abs(dy), abs(dx)) / patch, layer=layer,
                    cosine=scores['cosine'].mean().item(),
                    rel_score=scores['rel_score'].mean().item(),
                    num_images=images.shape[0]))
    return rows


@torch.no_grad()
def logit_invariance(logits_fn: Callable[[Tensor], Tensor],
                     images: Tensor,
                     shifts: Sequence[Tuple[int, int]],
                     patch_size: int,
                     mode: str = 'circular') -> List[dict]:
    """Invariance of a classifier's logits to the same shifts.

    Args:
        logits_fn (Callable): ``(B, C, H, W) -> (B, num_classes)``.
        images (Tensor): Normalised inputs; cropped to patch multiples here.
        shifts (Sequence[tuple[int, int]]): ``(dy, dx)`` shifts in pixels.
        patch_size (int): The backbone's patch, for the crop and ``shift_patches``.
        mode (str): ``'circular'`` or ``'crop'``.

    Returns:
        list[dict]: One row per shift with ``logit_cosine`` and ``top1_agreement``.
    """
    images = crop_to_patch_multiple(images, patch_size)
    rows = []
    for dy, dx in shifts:
        reference, shifted = shifted_views(images, (dy, dx), mode)
        ref_logits = logits_fn(reference).double()
        shifted_logits = logits_fn(shifted).double()
        rows.append(dict(
            shift_y=dy, shift_x=dx, shift_patches=max(abs(dy), abs(dx)) / patch_size,
            logit_cosine=F.cosine_similarity(ref_logits, shifted_logits, dim=1).mean().item(),
            top1_agreement=(ref_logits.argmax(1) == shifted_logits.argmax(1)).double()
            .mean().item(),
            num_images=images.shape[0]))
    return rows


def average_rows(rows: Sequence[dict], keys: Sequence[str],
                 value_names: Sequence[str]) -> List[dict]:
    """Image-count-weighted mean of ``value_names`` over rows that share ``keys``.

    Used to merge the per-batch rows of a dataloader (batches may differ in size).
    """
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    merged = []
    for group in groups.values():
        total = sum(r['num_images'] for r in group)
        out = {k: group[0][k] for k in group[0] if k not in value_names}
        out.update({name: sum(r[name] * r['num_images'] for r in group) / total
                    for name in value_names})
        out['num_images'] = total
        merged.append(out)
    return merged


def find_backbone(model: nn.Module) -> nn.Module:
    """The PosEncViT of a model: the model itself or its ``backbone``."""
    from mmsape.models import PosEncViT
    if isinstance(model, PosEncViT):
        return model
    backbone: Optional[nn.Module] = getattr(model, 'backbone', None)
    if isinstance(backbone, PosEncViT):
        return backbone
    raise TypeError(f'{type(model).__name__} is not a PosEncViT and has no PosEncViT '
                    f'backbone; these analyses read its per-block feature maps.')


def load_model(config: str, checkpoint: Optional[str], cfg_options: Optional[dict] = None):
    """A config's model, with the checkpoint's weights, and its test dataloader,
    through the Runner of :func:`mmsape.apis.build_test_runner`."""
    from mmsape.apis import build_test_runner, load_config
    cfg = load_config(config, cfg_options, work_dir=tempfile.mkdtemp(prefix='equivariance_'))
    cfg.log_level = 'WARNING'
    cfg.visualizer = dict(type='Visualizer', vis_backends=[])
    runner = build_test_runner(cfg, checkpoint)
    runner.load_or_resume()  # what runner.test() would do first
    loader = runner.build_dataloader(cfg.test_dataloader)
    return runner.model.eval(), loader


def classifier_logits(model: nn.Module) -> Optional[Callable[[Tensor], Tensor]]:
    """``inputs -> logits`` for mmpretrain classifiers (backbone, neck, head), else None."""
    head = getattr(model, 'head', None)
    if head is None or not hasattr(model, 'extract_feat'):
        return None
    return lambda inputs: head(model.extract_feat(inputs))


def score_model(model: nn.Module, loader, shifts: Sequence[Tuple[int, int]], mode: str,
                num_images: int, name: str) -> List[dict]:
    """Rows of the CSV for one model, averaged over ``num_images`` test images."""
    backbone = find_backbone(model)
    logits_fn = classifier_logits(model)
    rows, seen = [], 0
    with torch.no_grad():
        for data in loader:
            inputs = model.data_preprocessor(data, False)['inputs']
            inputs = inputs[:num_images - seen]
            rows += featmap_equivariance(backbone, inputs, shifts, mode)
            if logits_fn is not None:
                for row in logit_invariance(logits_fn, inputs, shifts, backbone.patch_size,
                                            mode):
                    rows.append(dict(row, layer=-1))
            seen += inputs.shape[0]
            if seen >= num_images:
                break
    merged = average_rows([r for r in rows if r['layer'] >= 0],
                          ('shift_y', 'shift_x', 'layer'), ('cosine', 'rel_score'))
    merged += average_rows([r for r in rows if r['layer'] < 0],
                           ('shift_y', 'shift_x', 'layer'), ('logit_cosine', 'top1_agreement'))
    return [dict(model=name, mode=mode, **r) for r in merged]


__all__ = [
    'SHIFT_MODES', 'all_block_featmaps', 'crop_to_patch_multiple', 'fractional_roll',
    'shifted_views', 'expected_and_actual', 'similarity_scores', 'pixel_shifts',
    'featmap_equivariance', 'logit_invariance', 'average_rows', 'find_backbone',
    'load_model', 'classifier_logits', 'score_model'
]
