"""LookHere (Fuller et al., NeurIPS 2024): heads look in fixed 2D directions.

Definitions, as in the authors' code (github.com/GreenCUBIC/lookhere, ``lookhere.py``
at commit 889d2e6; line numbers below refer to it):

* Positions are the integer (column, row) of each patch; the distance between
  two patches is Euclidean, in patches (L255-259, L342-344).
* Every head has a field of view: the keys it may attend to, a closed cone of
  45, 90 or 180 degrees pointing away from the query, boundary rays included,
  the query itself always included (L270-339); keys outside get ``-inf``
  (L373-374, L152). A few heads see everything.
* Inside the field of view the logit is penalised by
  ``global_slope * layer_slope * head_slope * distance`` (L149-153, L382-384);
  layer slopes run linearly from 1.5 (first block) to 0.5 (last) (L120-122).
* The class token attends to every patch and is seen by every patch, without
  penalty: its row and column of the bias are 0 (L71-86).
* At another grid size the bias is rebuilt from that grid, distances still in
  patches, not rescaled (``set_pos_embed``, L58-91); its ``global_slope``
  argument changes the penalty's strength for extrapolation.

The authors store the bias in bfloat16 with unseen keys at -3.4e38 (L152-153);
here it is float32 with ``-inf``: the same attention without bfloat16 rounding
of the penalty.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from mmsape.registry import POS_ENCODINGS

from .base import AttentionBiasPositionEncoding, TokenGrid, padding_key_mask
from .grid_cache import GridCache


class FieldOfView(NamedTuple):
    """The cone of keys a head attends to, in degrees.

    ``centre`` is measured counter-clockwise from "right" with "up" (towards row
    0) at 90; the cone spans ``centre +- width / 2``, both boundary rays
    included. Both boundaries must be multiples of 45 degrees and the width at
    most 180, so that the cone is the intersection of two closed half-planes.
    """
    centre: float
    width: float


# The official code's direction families (lookhere.py L159-210), each four heads
# in its order. Names: 'halves' up, down, left, right; 'diagonals' up-right,
# up-left, down-right, down-left; 'corners' up-left, up-right, down-left,
# down-right; 'triangles' up, down, left, right (90-degree cones); 'eighths1' /
# 'eighths2' the 45-degree halves of each triangle.
_FAMILIES = {
    'halves': ((90, 180), (270, 180), (180, 180), (0, 180)),
    'diagonals': ((45, 180), (135, 180), (315, 180), (225, 180)),
    'corners': ((135, 90), (45, 90), (225, 90), (315, 90)),
    'triangles': ((90, 90), (270, 90), (180, 90), (0, 90)),
    'eighths1': ((112.5, 45), (247.5, 45), (157.5, 45), (22.5, 45)),
    'eighths2': ((67.5, 45), (292.5, 45), (202.5, 45), (337.5, 45)),
}
#: Variant -> its two direction families (``head_directions='<first>-<second>-none'``).
#: The released checkpoints carry their config; the repository sets none. Ports
#: that load them use 'halves-diagonals-none' (LH-180) and 'corners-triangles-none'
#: (LH-90), global slope 2, layer slopes (1.5, 0.5); LH-45 is the same pattern with
#: the 45-degree families.
VARIANTS = {
    'LH-180': ('halves', 'diagonals'),
    'LH-90': ('corners', 'triangles'),
    'LH-45': ('eighths1', 'eighths2'),
}
# Slopes of the official code: four directed heads of a family share 1/2, a
# second block of the same family 1/4 (get_slopes, L114-115); the four heads
# that see everything get 1/4, 1/16, 1/64, 1/256 (get_none_slopes, L104-111).
_DIRECTED_SLOPE = 0.5
_UNRESTRICTED_SLOPES = (1 / 4, 1 / 16, 1 / 64, 1 / 256)
_HEADS_PER_CYCLE = 12

# Unit rays at 0, 45, ..., 315 degrees as (d_column, d_row); rows grow downwards.
_RAYS = ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))


def lookhere_heads(variant: str, num_heads: int) -> list[tuple[Optional[FieldOfView], float]]:
    """Field of view (None: everything) and distance slope of each head.

    For 12 heads (ViT-B, the paper's models) and 16 heads (ViT-L) this is the
    official code's layout (L229-234): four heads of the first family, four of
    the second, four that see everything; with 16 heads the first family comes
    twice, the second time with slope 1/4. Any other head count takes the first
    ``num_heads`` heads of the 12-head layout, repeated with halved slopes past
    12 heads. With fewer than 8 heads a variant cannot point in all its
    directions (the official code makes the same choice for 6 heads, L217-219).

    Args:
        variant (str): 'LH-180', 'LH-90' or 'LH-45'.
        num_heads (int): Attention heads.

    Examples:
        >>> [(fov.centre, fov.width) for fov, _ in lookhere_heads('LH-180', 4)]
        [(90, 180), (270, 180), (180, 180), (0, 180)]
        >>> [slope for _, slope in lookhere_heads('LH-90', 12)][7:]
        [0.5, 0.25, 0.0625, 0.015625, 0.00390625]
    """
    if variant not in VARIANTS:
        raise ValueError(f'variant={variant!r} is not a LookHere variant; use one of '
                         f'{sorted(VARIANTS)}.')
    first, second = VARIANTS[variant]

    def directed(family: str, slope: float) -> list:
        return [(FieldOfView(*fov), slope) for fov in _FAMILIES[family]]

    unrestricted = [(None, slope) for slope in _UNRESTRICTED_SLOPES]
    if num_heads == 16:
        return (directed(first, _DIRECTED_SLOPE) + directed(first, _DIRECTED_SLOPE / 2) +
                directed(second, _DIRECTED_SLOPE) + unrestricted)
    cycle = directed(first, _DIRECTED_SLOPE) + directed(second, _DIRECTED_SLOPE) + unrestricted
    return [(cycle[h % _HEADS_PER_CYCLE][0],
             cycle[h % _HEADS_PER_CYCLE][1] / 2**(h // _HEADS_PER_CYCLE))
            for h in range(num_heads)]


def field_of_view_half_planes(fov: Optional[FieldOfView]) -> tuple[tuple[int, int], ...]:
    """The two closed half-planes ``a * dx + b * dy >= 0`` whose intersection is ``fov``.

    ``(dx, dy)`` is the key's offset from the query in (columns, rows), rows
    growing downwards. ``None`` (everything) gives ``0 >= 0`` twice.
    """
    if fov is None:
        return (0, 0), (0, 0)
    start, end = fov.centre - fov.width / 2, fov.centre + fov.width / 2
    if not 0 < fov.width <= 180 or start % 45 or end % 45:
        raise ValueError(f'{fov} is not a cone between two multiples of 45 degrees, at '
                         f'most 180 wide.')
    (start_x, start_y), (end_x, end_y) = _RAYS[int(start // 45) % 8], _RAYS[int(end // 45) % 8]
    # Counter-clockwise from the start ray and clockwise from the end ray (the
    # cross products, with the row axis pointing down).
    return (start_y, -start_x), (-end_y, end_x)


@POS_ENCODINGS.register_module()
class LookHere(AttentionBiasPositionEncoding):
    """LookHere (arXiv 2405.13985): directed 2D attention masks plus a distance penalty.

    For a query patch ``i`` and a key patch ``n`` of head ``h`` in block ``l``,
    with ``d_in`` the Euclidean distance of their (column, row) positions in
    patches::

        bias[h, i, n] = -global_slope * layer_slope[l] * head_slope[h] * d_in
                        if n lies in head h's field of view seen from i, else -inf

    and ``softmax(q.k / sqrt(d) + bias)`` is the attention. The fields of view
    and head slopes follow the released variants (:func:`lookhere_heads`):

    * ``'LH-180'``: half-planes looking up, down, left, right and along the four
      diagonals, plus four heads that see everything;
    * ``'LH-90'``: quadrants (up-left, ...) and 90-degree cones (up, ...), plus four;
    * ``'LH-45'``: the eight 45-degree sectors, plus four.

    A field of view is closed: keys on its boundary rays (the query's own row,
    column or diagonal) are seen, and so is the query itself. Layer slopes run
    linearly from ``layer_slopes[0]`` in the first block to ``layer_slopes[1]``
    in the last. Prefix tokens (class and register tokens) see every patch and
    are seen by every patch, without penalty (zero bias), as the authors' class
    token.

    The bias depends only on the grid, so it is built for the actual ``H x W``
    of each batch (square or not, any size: extrapolation needs no resampling,
    and distances stay in patches as in the authors' ``set_pos_embed``). It is
    built once per grid size and device from a ``(heads, 2H-1, 2W-1)`` table of
    offsets and cached (:class:`GridCache`); each block scales it by its slope.

    Padding (``grid.pad_mask``: detection's batch padding, ViTDet's window
    padding) is not image: no image patch and no prefix token attends to a
    padding cell, so image tokens compute exactly what they compute on the
    unpadded grid. Padding cells themselves attend as if they were image, which
    keeps their softmax defined; their outputs are never used.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads.
        num_layers (int): Backbone blocks; the layer slopes span them.
        base_grid (tuple[int, int]): Unused: the bias is computed for every grid.
        num_prefix_tokens (int): Class / register tokens in front of the grid.
        variant (str): 'LH-180', 'LH-90' or 'LH-45'. Defaults to 'LH-180'.
        global_slope (float): Strength of the distance penalty; the released
            checkpoints' configs (as ported) use 2; the authors' ``set_pos_embed``
            can change it at test time. Defaults to 2.
        layer_slopes (tuple[float, float]): Slopes of the first and last block,
            linearly interpolated in between. Defaults to (1.5, 0.5).
        layers (Sequence[int], optional): Blocks with LookHere; the others use
            plain attention. Defaults to None (all blocks, as the authors).
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.

    Examples:
        >>> import torch
        >>> lookhere = LookHere(embed_dims=32, num_heads=4, num_layers=2, variant='LH-90')
        >>> q = k = v = torch.rand(3, 4, 1 + 4 * 6, 8)  # (B, heads, P + H*W, d)
        >>> grid = TokenGrid(4, 6, num_prefix=1)
        >>> lookhere.attention(0, q, k, v, grid).shape
        torch.Size([3, 4, 25, 8])
        >>> bias = lookhere.attention_bias(0, q, k, grid)  # (heads, P + H*W, P + H*W)
        >>> bias[0, 0].abs().max().item()  # the class token sees every patch, unpenalised
        0.0
        >>> # Head 0 looks at the up-left quadrant: from row 1, column 1 (token 1 + 7),
        >>> # the patch above it is 1 patch away (-2 * 1.5 * 0.5 * 1), the one below unseen.
        >>> bias[0, 8, 1 + 1].item(), bias[0, 8, 1 + 13].item()
        (-1.5, -inf)
    """

    def __init__(self,
                 variant: str = 'LH-180',
                 global_slope: float = 2.,
                 layer_slopes: Sequence[float] = (1.5, .5),
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        heads = lookhere_heads(variant, self.num_heads)
        layer_slopes = tuple(float(s) for s in layer_slopes)
        if len(layer_slopes) != 2:
            raise ValueError(f'layer_slopes={layer_slopes} must be (first block, last block), '
                             f'e.g. (1.5, 0.5).')
        # A zero slope would give 0 * -inf = nan at the masked keys.
        if not (math.isfinite(global_slope) and global_slope > 0 and
                all(math.isfinite(s) and s > 0 for s in layer_slopes)):
            raise ValueError(f'global_slope={global_slope} and layer_slopes={layer_slopes} must '
                             f'be finite and > 0 (the authors: 2 and (1.5, 0.5)).')
        self.variant = variant
        self.global_slope = float(global_slope)
        self.layer_slopes = layer_slopes
        self.fields_of_view = tuple(fov for fov, _ in heads)
        # Plain buffers, not parameters: LookHere learns nothing. Not saved, so
        # that a checkpoint does not pin the variant.
        self.register_buffer(
            'head_slopes', torch.tensor([slope for _, slope in heads]), persistent=False)
        self.register_buffer(
            'half_planes',
            torch.tensor([field_of_view_half_planes(fov) for fov in self.fields_of_view],
                         dtype=torch.float32), persistent=False)
        self._grid_biases = GridCache()

    def layer_scale(self, layer_index: int) -> float:
        """``global_slope * layer_slope``: the slopes span all blocks of the backbone."""
        first, last = self.layer_slopes
        fraction = layer_index / (self.num_layers - 1) if self.num_layers > 1 else 0.
        return self.global_slope * (first + (last - first) * fraction)

    def offset_bias(self, height: int, width: int) -> Tensor:
        """``(heads, 2H-1, 2W-1)``: the unscaled bias of every offset on an H x W grid.

        Entry ``[h, dy + H - 1, dx + W - 1]`` is ``-head_slope[h] * hypot(dx, dy)``
        for a key ``dx`` columns right of and ``dy`` rows below the query, or
        ``-inf`` outside head ``h``'s field of view.
        """
        device = self.head_slopes.device
        rows = torch.arange(1 - height, height, device=device, dtype=torch.float32)[:, None]
        cols = torch.arange(1 - width, width, device=device, dtype=torch.float32)[None, :]
        normals = self.half_planes[..., None, None]  # (heads, 2, 2, 1, 1)
        inside = (normals[:, :, 0] * cols + normals[:, :, 1] * rows >= 0).all(dim=1)
        penalty = -self.head_slopes.float()[:, None, None] * torch.hypot(rows, cols)
        return penalty.masked_fill(~inside, float('-inf'))

    def grid_bias(self, grid: TokenGrid) -> Tensor:
        """``(heads, P + H*W, P + H*W)`` bias of one grid before the layer scale.

        Built once per grid size and device (see :class:`GridCache`).
        """
        key = (grid.height, grid.width, grid.num_prefix, self.head_slopes.device)
        return self._grid_biases.get(key, lambda: self._build_grid_bias(grid))

    def _build_grid_bias(self, grid: TokenGrid) -> Tensor:
        height, width, num_prefix = grid.height, grid.width, grid.num_prefix
        table = self.offset_bias(height, width)
        # bias[h, (i, j), (r, c)] = table[h, r - i + H - 1, c - j + W - 1]: the H x W
        # windows of the table, read backwards. Copied once, straight into place.
        windows = table.unfold(1, height, 1).unfold(2, width, 1).flip(1, 2)
        bias = table.new_zeros(self.num_heads, grid.num_tokens, grid.num_tokens)
        patches = bias[:, num_prefix:, num_prefix:]
        patches.unflatten(1, (height, width)).unflatten(3, (height, width)).copy_(windows)
        return bias

    def attention_bias(self, layer_index: int, q: Tensor, k: Tensor,
                       grid: TokenGrid, tokens: Optional[Tensor] = None) -> Tensor:
        """LookHere's bias of block ``layer_index``, float32.

        ``(heads, N, N)`` without padding, ``(B, heads, N, N)`` with a
        ``grid.pad_mask``; ``q`` and ``k`` are not read (the bias depends on the
        grid alone).
        """
        bias = self.grid_bias(grid) * self.layer_scale(layer_index)
        # Nothing that is image (or a prefix token) looks at padding.
        blocked = padding_key_mask(grid)
        return bias if blocked is None else bias.masked_fill(blocked, float('-inf'))

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, variant={self.variant!r}, '
                f'global_slope={self.global_slope}, layer_slopes={self.layer_slopes}, '
                f'layers={self.layers}')


__all__ = ['LookHere', 'FieldOfView', 'VARIANTS', 'lookhere_heads',
           'field_of_view_half_planes']
