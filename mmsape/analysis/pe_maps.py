"""Maps of what a position encoding does, for one chosen patch of one image.

All maps are ``(B, H, W)`` over the patch grid (mean over heads where there are
heads), for the patch at grid cell ``(row, col)``:

* :func:`sape2_bias_map`: the SaPE² logit bias ``b_in`` of a layer for the fixed
  query patch ``i`` over all key patches ``n`` (the paper's Fig. 4);
* :func:`attention_map`: the softmax attention of that patch in a layer, as the
  layer's encoding computes it (any encoding: RoPE, CoPE, SaPE², ...);
* :func:`feature_similarity`: cosine similarity of the block's output feature at
  the patch with every other patch (for PEG, APE: on a blank image it shows the
  position signal alone);
* :func:`embedding_similarity`: cosine similarity of a token-additive
  embedding (learned APE resampled to the grid, or 2D sin-cos) or of the RoPE
  rotation of a constant vector, patch vs all.

These read the model; they never change it. SaPE² itself is not modified: its
public ``attention_bias`` is called with the q, k captured from the layer.
"""
import math
from typing import Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsape.analysis.equivariance import all_block_featmaps
from mmsape.models.pos_encodings import TokenGrid
from mmsape.models.pos_encodings.absolute import LearnedAPE, SinCos2DPositionEncoding
from mmsape.models.pos_encodings.rope import RoPE2D
from mmsape.models.pos_encodings.sape2 import SaPE2


def find_encoding(backbone: nn.Module, cls: Type[nn.Module]) -> Optional[nn.Module]:
    """The first encoding of type ``cls`` in the backbone (stacks included)."""
    return next((m for m in backbone.pos_encoding.modules() if isinstance(m, cls)), None)


def token_grid(backbone: nn.Module, images: Tensor) -> TokenGrid:
    """The grid the backbone builds for ``images`` (padded to patch multiples)."""
    patch = backbone.patch_size
    height, width = (math.ceil(s / patch) for s in images.shape[-2:])
    return TokenGrid(height, width, backbone.num_prefix_tokens)


@torch.no_grad()
def capture_attention_inputs(backbone: nn.Module, images: Tensor,
                             layer: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``q, k`` of block ``layer``, ``(B, heads, P + H*W, d)``, before any rotation,
    and the ``(B, P + H*W, C)`` tokens they were projected from (what the
    encoding's ``attention`` receives as ``tokens``)."""
    block = backbone.blocks[layer]
    if block.window_size:
        raise ValueError(f'Block {layer} uses window attention; pick a global block.')
    captured = {}

    def keep(module, inputs, output):
        captured.setdefault('tokens', inputs[0])
        captured.setdefault('qkv', output)

    handle = block.attn.qkv.register_forward_hook(keep)
    try:
        backbone(images)
    finally:
        handle.remove()
    qkv = captured['qkv']
    batch, num_tokens, _ = qkv.shape
    heads = block.attn.num_heads
    q, k, _ = qkv.reshape(batch, num_tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, captured['tokens']


def capture_qk(backbone: nn.Module, images: Tensor, layer: int) -> Tuple[Tensor, Tensor]:
    """``q, k`` of block ``layer``, ``(B, heads, P + H*W, d)``, before any rotation."""
    q, k, _ = capture_attention_inputs(backbone, images, layer)
    return q, k


def _patch_row(grid: TokenGrid, patch: Tuple[int, int]) -> int:
    row, col = patch
    if not (0 <= row < grid.height and 0 <= col < grid.width):
        raise ValueError(f'Patch {patch} is outside the {grid.height}x{grid.width} grid.')
    return grid.num_prefix + row * grid.width + col


def _to_map(values: Tensor, grid: TokenGrid) -> Tensor:
    """``(B, heads, P + H*W)`` or ``(B, P + H*W)`` -> ``(B, H, W)`` (mean over heads)."""
    if values.dim() == 3:
        values = values.mean(1)
    return values[:, grid.num_prefix:].reshape(-1, grid.height, grid.width)


@torch.no_grad()
def sape2_bias_map(backbone: nn.Module, images: Tensor, layer: int,
                   patch: Tuple[int, int]) -> Tensor:
    """SaPE² bias ``b_in`` of ``layer`` for query patch ``patch`` over all patches n."""
    sape = find_encoding(backbone, SaPE2)
    if sape is None:
        raise ValueError('The backbone has no SaPE2 encoding.')
    grid = token_grid(backbone, images)
    q, k = capture_qk(backbone, images, layer)
    bias = sape.attention_bias(layer, q, k, grid)  # (B, heads, N, N)
    return _to_map(bias[:, :, _patch_row(grid, patch)], grid)


@torch.no_grad()
def attention_map(backbone: nn.Module, images: Tensor, layer: int,
                  patch: Tuple[int, int]) -> Tensor:
    """Attention weights of ``patch`` over all patches in ``layer``.

    Uses the encoding's own ``attention`` with ``v`` = identity, so that its output
    *is* the attention matrix, whatever the encoding does to q, k or the logits.
    """
    grid = token_grid(backbone, images)
    q, k, tokens = capture_attention_inputs(backbone, images, layer)
    eye = torch.eye(grid.num_tokens, dtype=q.dtype).expand(*q.shape[:2], -1, -1)
    weights = backbone.pos_encoding.attention(layer, q, k, eye, grid, tokens=tokens)
    return _to_map(weights[:, :, _patch_row(grid, patch)], grid)


@torch.no_grad()
def feature_similarity(backbone: nn.Module, images: Tensor, layer: int,
                       patch: Tuple[int, int]) -> Tensor:
    """Cosine similarity of block ``layer``'s feature at ``patch`` with all patches."""
    with all_block_featmaps(backbone):
        feature_map = backbone(images)[layer]  # (B, C, H, W)
    row, col = patch
    anchor = feature_map[:, :, row:row + 1, col:col + 1]
    return F.cosine_similarity(feature_map, anchor, dim=1)


@torch.no_grad()
def embedding_similarity(backbone: nn.Module, grid_hw: Tuple[int, int],
                         patch: Tuple[int, int], layer: int = 0) -> Tuple[str, Tensor]:
    """Patch-vs-all cosine similarity of the backbone's position embedding.

    Returns:
        tuple[str, Tensor]: The embedding's name and a ``(1, H, W)`` map.

    Raises:
        ValueError: If the backbone has no APE, sin-cos or RoPE encoding.
    """
    grid = TokenGrid(*grid_hw, 0)
    index = _patch_row(grid, patch)
    ape = find_encoding(backbone, LearnedAPE)
    sincos = find_encoding(backbone, SinCos2DPositionEncoding)
    rope = find_encoding(backbone, RoPE2D)
    if ape is not None:
        name, embed = 'learned APE', ape.resampled_pos_embed(grid_hw)[0]
    elif sincos is not None:
        name, embed = 'sin-cos', sincos.sincos_embed(grid_hw).reshape(grid.num_patches, -1)
    elif rope is not None:
        if layer not in rope.layers:
            layer = rope.layers[0]
        # The rotation of a constant vector at every position: cos(r_i, r_n) is
        # the position-only part of RoPE's q.k, a function of p_i - p_n.
        ones = torch.ones(1, backbone.pos_encoding.num_heads, grid.num_patches,
                          rope.head_dims)
        rotated = rope.rotate(layer, ones, grid)[0]  # (heads, N, d)
        sim = F.cosine_similarity(rotated, rotated[:, index:index + 1], dim=-1).mean(0)
        return f'RoPE {rope.mode} (block {layer})', sim.reshape(1, *grid_hw)
    else:
        raise ValueError('The backbone has no LearnedAPE, SinCos2D or RoPE2D encoding.')
    sim = F.cosine_similarity(embed, embed[index:index + 1], dim=-1)
    return name, sim.reshape(1, *grid_hw)


__all__ = [
    'find_encoding', 'token_grid', 'capture_attention_inputs', 'capture_qk', 'sape2_bias_map',
    'attention_map', 'feature_similarity', 'embedding_similarity'
]
