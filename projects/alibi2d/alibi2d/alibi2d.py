"""2D ALiBi: a fixed, per-head linear penalty on the grid distance between patches.

A third-party position encoding for mmsape, written only against the public
interface (:class:`mmsape.models.pos_encodings.AttentionBiasPositionEncoding`:
implement ``attention_bias``) and registered into mmsape's registry from outside
the package. Press et al.
(ICLR 2022) bias 1D attention by ``-slope_h * |i - j|``; here the distance is the
Euclidean distance between the (row, column) positions of two patches.
"""
from typing import Optional

import torch
from torch import Tensor

from mmsape.models.pos_encodings import AttentionBiasPositionEncoding, TokenGrid
from mmsape.registry import POS_ENCODINGS


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's geometric slopes 2^(-8/h), 2^(-16/h), ... for ``num_heads`` heads."""
    return torch.tensor([2.0**(-8.0 * (i + 1) / num_heads) for i in range(num_heads)])


@POS_ENCODINGS.register_module()
class ALiBi2D(AttentionBiasPositionEncoding):
    """Attention bias ``-slope_h * ||pos_i - pos_j||_2`` between patch tokens.

    Prefix (class / register) tokens get zero bias. No parameters: it works on
    any grid and needs no resampling.

    Args:
        layers (Sequence[int], optional): Blocks that carry the bias; all when
            None.
        **backbone_args: See
            :class:`~mmsape.models.pos_encodings.BasePositionEncoding`.

    Examples:
        >>> import torch
        >>> from mmsape.models import PosEncViT
        >>> import projects.alibi2d.alibi2d  # registers ALiBi2D
        >>> vit = PosEncViT(arch='deit-tiny', pos_encoding=dict(type='ALiBi2D'))
        >>> vit(torch.rand(1, 3, 64, 96))[0].shape
        torch.Size([1, 192])
    """

    def __init__(self, **backbone_args) -> None:
        super().__init__(**backbone_args)
        self.register_buffer('slopes', alibi_slopes(self.num_heads), persistent=False)

    def attention_bias(self, layer_index: int, q: Tensor, k: Tensor,
                       grid: TokenGrid, tokens: Optional[Tensor] = None) -> Tensor:
        """``(heads, N, N)`` bias in q's dtype, zero in the prefix rows and columns;
        the same for every layer and input."""
        rows, cols = torch.meshgrid(torch.arange(grid.height), torch.arange(grid.width),
                                    indexing='ij')
        positions = torch.stack([rows, cols], -1).reshape(-1, 2).to(self.slopes)
        distance = torch.cdist(positions, positions)
        bias = distance.new_zeros(grid.num_tokens, grid.num_tokens)
        bias[grid.num_prefix:, grid.num_prefix:] = distance
        return (-self.slopes[:, None, None] * bias).to(q.dtype)
