"""2D rotary position embedding (RoPE-ViT, Heo et al., ECCV 2024): axial and mixed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat, apply_rot_embed_cat
from timm.layers.pos_embed_sincos import get_mixed_freqs, get_mixed_grid, init_random_2d_freqs
from torch import Tensor, nn

from mmsape.registry import POS_ENCODINGS

from .base import AttentionPositionEncoding, TokenGrid

_MODES = ('axial', 'mixed')
# RoPE-ViT's frequency bases: 100 for axial, 10 for the learnable mixed frequencies.
_DEFAULT_THETA = {'axial': 100., 'mixed': 10.}


@POS_ENCODINGS.register_module()
class RoPE2D(AttentionPositionEncoding):
    """2D rotary position embedding of patch tokens (RoPE-ViT).

    Each head's ``q`` and ``k`` are cut into consecutive pairs
    ``(x[2i], x[2i+1])``; pair ``i`` of the patch at column ``x`` and row ``y``
    (0-based) is rotated by an angle ``a_i(x, y)``, i.e. multiplied by
    ``exp(1j * a_i)`` as a complex number. The ``q.k`` logits then depend only
    on position differences. Prefix tokens are not rotated. Attention itself is
    plain scaled dot-product attention, so fused kernels still apply.

    * ``'axial'``: the first ``d/4`` pairs use the column, the last ``d/4`` the
      row: ``a_i = x * f_i`` and ``a_{d/4+i} = y * f_i`` with
      ``f_i = theta ** (-i / (d/4))``.
    * ``'mixed'``: learnable frequencies per layer and head,
      ``a_i = fx_i * x + fy_i * y``, initialised as in RoPE-ViT's
      ``init_random_2d_freqs`` (axial magnitudes, rotated by a random angle per
      head and layer).

    Implementation: timm's ``RotaryEmbeddingCat`` (``in_pixels=False``,
    ``grid_indexing='xy'``) and ``get_mixed_freqs`` build the angles, and
    ``apply_rot_embed_cat`` rotates. With those settings timm's interleaved
    layout and column-first channel order are RoPE-ViT's exactly; the tests
    check that against a naive complex-number implementation.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads; the head dim ``embed_dims // num_heads``
            must be divisible by 4 (two axes, pairs of channels).
        num_layers (int): Backbone blocks.
        base_grid (tuple[int, int]): Unused: angles are computed for every grid.
        num_prefix_tokens (int): Class / register tokens in front of the grid.
        mode (str): ``'axial'`` or ``'mixed'``. Defaults to 'axial'.
        theta (float, optional): Frequency base. Defaults to None, which means
            RoPE-ViT's choice for the mode: 100 for axial, 10 for mixed.
        layers (Sequence[int], optional): Blocks whose attention is rotated;
            the others use plain attention. Defaults to None (all blocks).
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.

    Examples:
        >>> import torch
        >>> rope = RoPE2D(embed_dims=32, num_heads=2, num_layers=2, mode='mixed')
        >>> q = k = v = torch.rand(3, 2, 1 + 4 * 6, 16)  # (B, heads, P + H*W, d)
        >>> rope.attention(0, q, k, v, TokenGrid(4, 6, num_prefix=1)).shape
        torch.Size([3, 2, 25, 16])
    """

    # RoPE-ViT excludes the mixed frequencies from weight decay.
    exclude_from_weight_decay = True
    per_block_attr = 'freqs'

    def __init__(self,
                 mode: str = 'axial',
                 theta: float | None = None,
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        if mode not in _MODES:
            raise ValueError(f'mode={mode!r} is not a RoPE2D mode; use one of {_MODES}.')
        if self.head_dims % 4:
            raise ValueError(
                f'RoPE2D needs a head dim divisible by 4 (two axes times pairs of '
                f'channels), but embed_dims={self.embed_dims} / num_heads={self.num_heads} = '
                f'{self.head_dims}; change num_heads or embed_dims.')
        theta = _DEFAULT_THETA[mode] if theta is None else float(theta)
        if theta <= 0:
            raise ValueError(f'theta={theta} must be > 0 (RoPE-ViT: 100 axial, 10 mixed).')
        self.mode = mode
        self.theta = theta

        if mode == 'axial':
            # 'index' grid (in_pixels=False) with 'xy' indexing: angles from integer
            # (column, row), column first, like RoPE-ViT's compute_axial_cis.
            self.rotary = RotaryEmbeddingCat(
                dim=self.head_dims, temperature=theta, in_pixels=False, grid_indexing='xy')
            self.freqs = None
        else:
            self.rotary = None
            freqs = init_random_2d_freqs(
                self.head_dims, len(self.layers), self.num_heads, temperature=theta)
            # One (2, heads, d/2) tensor per rotated block, keyed by block index so
            # that layer-wise lr decay can place it.
            self.freqs = nn.ParameterDict({
                str(layer): nn.Parameter(freqs[:, i].clone())
                for i, layer in enumerate(self.layers)
            })
        self._embed_cache: tuple[tuple, Tensor] | None = None

    def rotary_embed(self, layer_index: int, grid: TokenGrid, device: torch.device) -> Tensor:
        """Concatenated ``[sin, cos]`` angles of the patch tokens for one layer.

        Returns ``(H*W, 2d)`` for axial, ``(heads, H*W, 2d)`` for mixed, in the
        interleaved layout of timm's ``apply_rot_embed_cat``.
        """
        if self.mode == 'axial':
            # Inference-mode tensors cannot be saved for backward, so an embedding
            # cached during inference_mode evaluation must not reach training.
            key = (grid.hw, device, torch.is_inference_mode_enabled())
            if self._embed_cache is None or self._embed_cache[0] != key:
                # The same for every layer and batch of this grid size: build once.
                embed = self.rotary.get_embed(list(grid.hw)).to(device)
                self._embed_cache = (key, embed)
            return self._embed_cache[1]
        freqs = self.freqs[str(layer_index)]
        cols, rows = get_mixed_grid(list(grid.hw), grid_indexing='xy', device=freqs.device)
        return get_mixed_freqs(freqs, cols, rows, dtype=torch.float32)

    def rotate(self, layer_index: int, x: Tensor, grid: TokenGrid) -> Tensor:
        """Rotate the patch tokens of ``(B, heads, P + H*W, d)`` queries or keys."""
        embed = self.rotary_embed(layer_index, grid, x.device)
        prefix, patches = x[:, :, :grid.num_prefix], x[:, :, grid.num_prefix:]
        return torch.cat([prefix, apply_rot_embed_cat(patches, embed)], dim=2)

    def encoded_attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                          grid: TokenGrid, dropout_p: float = 0.) -> Tensor:
        q = self.rotate(layer_index, q, grid)
        k = self.rotate(layer_index, k, grid)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, mode={self.mode!r}, theta={self.theta}, '
                f'layers={self.layers}')


__all__ = ['RoPE2D']
