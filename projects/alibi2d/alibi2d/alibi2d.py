"""2D ALiBi: a fixed, per-head linear penalty on the grid distance between patches.

A third-party position encoding for mmsape, written only against the public
interface (:class:`mmsape.models.pos_encodings.BasePositionEncoding`) and
registered into mmsape's registry from outside the package. Press et al.
(ICLR 2022) bias 1D attention by ``-slope_h * |i - j|``; here the distance is the
Euclidean distance between the (row, column) positions of two patches.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

from mmsape.models.pos_encodings.base import (
    BasePositionEncoding,
    TokenGrid,
    attention_with_bias,
    layers_from_option,
)
from mmsape.registry import POS_ENCODINGS


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's geometric slopes 2^(-8/h), 2^(-16/h), ... for ``num_heads`` heads."""
    return torch.tensor([2.0**(-8.0 * (i + 1) / num_heads) for i in range(num_heads)])


@POS_ENCODINGS.register_module()
class ALiBi2D(BasePositionEncoding):
    """Attention bias ``-slope_h * ||pos_i - pos_j||_2`` between patch tokens.

    Prefix (class / register) tokens get zero bias. No parameters: it works on
    any grid and needs no resampling.

    Args:
        layers (Sequence[int], optional): Blocks that carry the bias; all when
            None.
        **backbone_args: See :class:`BasePositionEncoding`.

    Examples:
        >>> import torch
        >>> from mmsape.models import PosEncViT
        >>> import projects.alibi2d.alibi2d  # registers ALiBi2D
        >>> vit = PosEncViT(arch='deit-tiny', pos_encoding=dict(type='ALiBi2D'))
        >>> vit(torch.rand(1, 3, 64, 96))[0].shape
        torch.Size([1, 192])
    """
    acts_in_attention = True

    def __init__(self, layers: Optional[Sequence[int]] = None, **backbone_args) -> None:
        super().__init__(**backbone_args)
        self.layers = layers_from_option(layers, self.num_layers)
        self.register_buffer('slopes', alibi_slopes(self.num_heads), persistent=False)

    def attention_bias(self, grid: TokenGrid, dtype: torch.dtype) -> Tensor:
        """``(heads, N, N)`` bias for a grid with prefix tokens (zero rows/columns)."""
        rows, cols = torch.meshgrid(torch.arange(grid.height), torch.arange(grid.width),
                                    indexing='ij')
        positions = torch.stack([rows, cols], -1).reshape(-1, 2).to(self.slopes)
        distance = torch.cdist(positions, positions)
        bias = distance.new_zeros(grid.num_tokens, grid.num_tokens)
        bias[grid.num_prefix:, grid.num_prefix:] = distance
        return (-self.slopes[:, None, None] * bias).to(dtype)

    def attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor, grid: TokenGrid,
                  dropout_p: float = 0.) -> Tensor:
        if layer_index not in self.layers:
            return super().attention(layer_index, q, k, v, grid, dropout_p)
        return attention_with_bias(q, k, v, self.attention_bias(grid, q.dtype), dropout_p)
