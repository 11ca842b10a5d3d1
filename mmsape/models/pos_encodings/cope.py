"""1D Contextual Position Encoding (CoPE, Golovneva et al. 2024) over raster order."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsape.registry import POS_ENCODINGS

from .base import AttentionBiasPositionEncoding, TokenGrid


@POS_ENCODINGS.register_module()
class CoPE1D(AttentionBiasPositionEncoding):
    """Contextual position encoding (arXiv 2405.18719) of the raster-ordered patches.

    Positions are counted by the content: with the patch tokens in raster
    (row-major) order and ``s_ij = q_i . k_j / sqrt(d)``,

    * gates ``g_ij = sigmoid(s_ij)``;
    * position of token ``j`` seen from ``i``: ``p_ij = sum_{m >= j} g_im``, a
      suffix sum to the end of the sequence (non-causal, the form SaPE² extends
      to 2D), clamped to ``[0, num_positions - 1]``;
    * ``z_i[p] = q_i . e[p]`` for the integer positions (table ``e`` of
      ``num_positions x d`` per layer, shared by the heads), linearly
      interpolated between ``floor(p)`` and ``ceil(p)``;
    * logits ``s_ij + z_i(p_ij)``: the bias is added after the ``1/sqrt(d)``
      scaling, as in the paper's code.

    Only patch-patch pairs get a bias and only patch keys are counted; rows and
    columns of prefix tokens are unbiased. The gates and positions are computed
    in float32 at least, because a suffix sum over thousands of tokens is
    imprecise in half precision.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads.
        num_layers (int): Backbone blocks.
        base_grid (tuple[int, int]): Unused: positions are counted, not stored.
        num_prefix_tokens (int): Class / register tokens in front of the grid.
        num_positions (int): Size M of the position table; positions saturate
            at ``M - 1``. Defaults to 64.
        layers (Sequence[int], optional): Blocks with CoPE; the others use plain
            attention. Defaults to None (all blocks).
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.

    Examples:
        >>> import torch
        >>> cope = CoPE1D(embed_dims=32, num_heads=2, num_layers=2, num_positions=8)
        >>> q = k = v = torch.rand(3, 2, 1 + 4 * 6, 16)  # (B, heads, P + H*W, d)
        >>> cope.attention(0, q, k, v, TokenGrid(4, 6, num_prefix=1)).shape
        torch.Size([3, 2, 25, 16])
    """

    # Position tables, like pos_embed, are not decayed.
    exclude_from_weight_decay = True
    per_block_attr = 'position_embeds'

    def __init__(self, num_positions: int = 64, **backbone_args) -> None:
        super().__init__(**backbone_args)
        if num_positions < 1:
            raise ValueError(f'num_positions={num_positions} must be >= 1; it is the number '
                             f'of learned integer positions (e.g. 64).')
        self.num_positions = num_positions
        # One table per block, keyed by block index so that layer-wise lr decay
        # can place it.
        self.position_embeds = nn.ParameterDict({
            str(layer): nn.Parameter(torch.zeros(num_positions, self.head_dims))
            for layer in self.layers
        })
        for table in self.position_embeds.values():
            nn.init.trunc_normal_(table, std=.02)

    def attention_bias(self, layer_index: int, q: Tensor, k: Tensor,
                       grid: TokenGrid, tokens: Optional[Tensor] = None) -> Tensor:
        """CoPE bias ``z_i(p_ij)`` of ``(B, heads, P + H*W, d)`` queries and keys.

        Returns ``(B, heads, N, N)`` in float32 (at least), zero in the rows and
        columns of the prefix tokens.
        """
        num_prefix = grid.num_prefix
        q, k = q[:, :, num_prefix:], k[:, :, num_prefix:]
        compute_dtype = torch.promote_types(q.dtype, torch.float32)
        q = q.to(compute_dtype)
        k = k.to(compute_dtype)
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        gates = logits.sigmoid()
        # Suffix sum: p_ij counts the gates of j and every later token.
        positions = gates.flip(-1).cumsum(-1).flip(-1)
        positions = positions.clamp(0, self.num_positions - 1)
        table = self.position_embeds[str(layer_index)].to(compute_dtype)
        # z_i[p] for the integer positions only: (B, heads, N, M), cheaper than
        # embedding every fractional position.
        integer_logits = q @ table.t()
        floor = positions.floor()
        weight_ceil = positions - floor
        floor = floor.long()
        ceil = positions.ceil().long()
        bias = (integer_logits.gather(-1, ceil) * weight_ceil +
                integer_logits.gather(-1, floor) * (1 - weight_ceil))
        # Zero bias in the prefix rows and columns.
        return F.pad(bias, (num_prefix, 0, num_prefix, 0))

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, num_positions={self.num_positions}, '
                f'layers={self.layers}')


__all__ = ['CoPE1D']
