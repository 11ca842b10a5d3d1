"""PaPE: Parabolic Position Encoding (arXiv 2602.01418), a content-dependent logit bias.

The equations and every decision the paper leaves open are in ``docs/method.md``,
section "PaPE"; in short, per block in ``layers``, head h and parabola p:

* every token n has a 2D coordinate ``c_n = (x_n, y_n)`` = (column, row),
  1-based, in patches; prefix (class / register) tokens sit at (0, 0), one
  cell up-left of the first patch, as in the authors' classifier;
* a learned linear map without bias projects it to ``heads x parabolas``
  positions, ``P_n = W_pos c_n``;
* query i reads a curvature and a slope from its own token ``t_i`` (the
  attention's input, the block's input after its first norm):
  ``a_i = softplus(W_a t_i)``, ``b_i = W_b t_i`` (one linear map without bias);
* the bias is ``b_ij = sum_p [-a_ip (P_ip - P_jp)^2 + b_ip (P_ip - P_jp)]``, and the
  logits are ``(q_i . k_j + b_ij) / sqrt(head_dim)``: the authors scale the
  whole augmented product, bias included.

Expanding the square makes ``b_ij`` the dot product of a query row and a key row
(the authors' form), so the exact attention is plain fused attention on q and
k augmented with ``3 * parabolas + 2`` columns, never an N x N tensor::

    q'_i = [q_i, -sum_p a_ip P_ip^2, a_i, 2 a_i P_i, sum_p b_ip P_ip, b_i]
    k'_j = [k_j,  1,               -P_j^2,  P_j,    1,              -P_j]

PaPE-RI (``rotation_invariant=True``) keeps one parabola per head without slope
over fixed random per-head scales ``s_h``: ``b_ij = -a_i ||s_h (c_i - c_j)||^2``,
with ``2 * 2 + 1`` columns ``q' = [q, -a ||s c_i||^2, a, a, 2 a s c_i]``,
``k' = [k, 1, -(s c_j)^2, s c_j]``.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsape.registry import POS_ENCODINGS

from .base import AttentionBiasPositionEncoding, TokenGrid, attention_with_bias, padding_key_mask

COORDS_CHOICES = ('patch', 'normalized')
PREFIX_POSITION_CHOICES = ('origin', 'none')
IMPL_CHOICES = ('fused', 'dense')
#: The authors' number of parabolas per head.
DEFAULT_PARABOLAS = 50
#: Coordinates per token (x, y); PaPE-RI's scales are U(-sqrt(1/2), sqrt(1/2)).
COORDINATE_DIMS = 2


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The bias is a difference of terms that grow with P^2: half precision
    would round them by more than the bias itself changes."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def token_coordinates(grid: TokenGrid, coords: str = 'patch',
                      device: Optional[torch.device] = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """``(P + H*W, 2)`` coordinates ``(x, y)`` of every token, centred.

    Patch ``(row r, column c)`` (0-based) is at ``(c + 1, r + 1)``, or at
    ``((c + 1) / W, (r + 1) / H)`` for ``coords='normalized'``; prefix tokens at
    ``(0, 0)``. Every coordinate is then shifted by the grid's centre: PaPE's
    bias depends only on differences of linear maps of coordinates, so the
    shift changes nothing but the size of the terms whose differences the
    augmented product takes (the cancellation shrinks).
    """
    height, width = grid.hw
    prefix = torch.zeros(grid.num_prefix, device=device, dtype=dtype)
    x = torch.cat([prefix, torch.arange(1, width + 1, device=device, dtype=dtype).repeat(height)])
    y = torch.cat([prefix, torch.arange(1, height + 1, device=device,
                                        dtype=dtype).repeat_interleave(width)])
    centre_x, centre_y = (width + 1) / 2, (height + 1) / 2
    if coords == 'normalized':
        x, y = x / width, y / height
        centre_x, centre_y = centre_x / width, centre_y / height
    # Scalars, not a tensor built from them: the grid size may be symbolic
    # under torch.compile.
    return torch.stack([x - centre_x, y - centre_y], dim=-1)


class ParabolaMaps(nn.Module):
    """One block's PaPE maps (the authors' ``position`` and ``ab``).

    ``position``: ``(x, y)`` -> ``heads x parabolas`` positions, output index
    ``h * parabolas + p``. ``curvature_slope``: token -> curvatures (outputs
    ``[0, heads * parabolas)``) and slopes (the rest), each ordered as
    ``position``'s. Both without bias, PyTorch's default initialisation.
    """

    def __init__(self, embed_dims: int, num_heads: int, parabolas: int) -> None:
        super().__init__()
        self.position = nn.Linear(COORDINATE_DIMS, num_heads * parabolas, bias=False)
        self.curvature_slope = nn.Linear(embed_dims, 2 * num_heads * parabolas, bias=False)


class RotationInvariantMaps(nn.Module):
    """One block's PaPE-RI maps (the authors' ``a`` and ``position_scales``).

    ``curvature``: token -> one curvature per head, no bias, PyTorch's default
    initialisation. ``position_scales``: fixed per-head scales of the
    coordinates, ``U(-sqrt(1/2), sqrt(1/2))``, a buffer saved with the model
    (the draw is part of the trained model).
    """

    def __init__(self, embed_dims: int, num_heads: int) -> None:
        super().__init__()
        self.curvature = nn.Linear(embed_dims, num_heads, bias=False)
        bound = math.sqrt(1 / COORDINATE_DIMS)
        self.register_buffer('position_scales', (2 * torch.rand(num_heads) - 1) * bound)


@POS_ENCODINGS.register_module()
class PaPE(AttentionBiasPositionEncoding):
    """Parabolic Position Encoding: per-query parabolas over learned 2D projections.

    See the module docstring for the equations. Every block in ``layers`` owns
    ``layer_maps.<block>``: a :class:`ParabolaMaps` (``position.weight``
    ``(heads * parabolas, 2)``, ``curvature_slope.weight``
    ``(2 * heads * parabolas, C)``) or, for PaPE-RI, a
    :class:`RotationInvariantMaps`. Every parameter is weight-decayed, as the
    authors' optimizer decays everything; layer-wise lr decay and
    ``frozen_stages`` place them with their block.

    The encoding reads the attention's input tokens (``tokens``, which the
    backbone passes to every attention hook); calling :meth:`attention` of a
    PaPE block without them raises.

    Computation (``impl='fused'``): scaled dot-product attention on q and k
    augmented with ``3 * parabolas + 2`` columns (5 for PaPE-RI), rounded up to
    a multiple of ``width_multiple`` with zero columns, v zero-padded to the
    same width (fused kernels need equal q and v widths; without them PyTorch
    falls back to the kernel that materialises the logits), and the scale
    ``1 / sqrt(head_dim)`` given explicitly. The columns, and for half-precision
    inputs the attention itself, are computed in float32 (outside autocast):
    the bias is a difference of terms like ``a P^2`` that reach hundreds to
    thousands, and rounding them to bfloat16 moved ViT-S's logits at
    initialisation by up to 0.5 on a 14 x 14 grid and 2.2 on 32 x 32 (float16:
    0.05 and 0.3; float32: 3e-4 and 1e-3). The output has v's dtype.
    ``impl='dense'`` materialises the ``(B, heads, N, N)`` bias
    (:meth:`attention_bias`) instead: a reference, quadratic in memory.

    Padding (``grid.pad_mask``: padded batches, padded ViTDet windows) is not
    image: image and prefix queries give padding keys exactly zero attention
    (a boolean mask), so image tokens compute what they compute on the
    unpadded grid; padding queries attend to everything (their softmax stays
    defined, their outputs are never used). In windows the coordinates are
    window-local, which gives the same bias as global ones: it depends only on
    coordinate differences.

    Args:
        parabolas (int, optional): Parabolas per head. Defaults to None: 50,
            the authors' default (PaPE-RI has one per head and takes none).
        coords (str): ``'patch'``: coordinates in patches, as the authors'
            default. ``'normalized'``: x divided by the grid width W and y by
            its height H, so that the grid spans (0, 1] on both axes at every
            size. The authors' ``normalize`` flag divides (column, row) by
            (rows, columns) instead, which swaps the axes' scales on non-square
            grids; mmsape divides each axis by its own length. Defaults to
            ``'patch'``.
        prefix_position (str): ``'origin'``: prefix tokens (class and register
            tokens) at coordinate (0, 0), one cell up-left of the first patch,
            with the parabolic bias of a patch there, as the authors' class
            token. ``'none'``: zero bias in the rows and columns of prefix
            tokens (mmsape's convention for SaPE² and LookHere). Defaults to
            ``'origin'``.
        rotation_invariant (bool): PaPE-RI: one curvature per head, no slope,
            over fixed random per-head coordinate scales. Defaults to False.
        impl (str): ``'fused'`` (exact, memory linear in N) or ``'dense'``
            (the materialised bias). Defaults to ``'fused'``.
        width_multiple (int): Round the augmented head width up to a multiple
            of this (the authors use 8, which fused GPU kernels favour); 1
            leaves it as it is. Defaults to 8.
        layers (Sequence[int], optional): Blocks with PaPE; the others attend
            plainly. Defaults to None (every block, as the authors).
        **backbone_args: See :class:`BasePositionEncoding`.

    Examples:
        >>> import torch
        >>> pape = PaPE(embed_dims=32, num_heads=4, num_layers=2, parabolas=3)
        >>> grid = TokenGrid(3, 5, num_prefix=1)
        >>> q = k = v = torch.rand(2, 4, grid.num_tokens, 8)  # (B, heads, P + H*W, d)
        >>> tokens = torch.rand(2, grid.num_tokens, 32)     # the attention's input
        >>> pape.attention(0, q, k, v, grid, tokens=tokens).shape
        torch.Size([2, 4, 16, 8])
        >>> pape.attention_bias(0, q, k, grid, tokens=tokens).shape  # b_ij / sqrt(d)
        torch.Size([2, 4, 16, 16])
        >>> query_factors, key_factors = pape.parabola_factors(0, grid, tokens)
        >>> query_factors.shape[-1]  # 3 * 3 + 2, zero-padded: head dim 8 + 16 = 24 = 3 * 8
        16
    """

    per_block_attr = 'layer_maps'

    def __init__(self,
                 parabolas: Optional[int] = None,
                 coords: str = 'patch',
                 prefix_position: str = 'origin',
                 rotation_invariant: bool = False,
                 impl: str = 'fused',
                 width_multiple: int = 8,
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        _check_choice('coords', coords, COORDS_CHOICES)
        _check_choice('prefix_position', prefix_position, PREFIX_POSITION_CHOICES)
        _check_choice('impl', impl, IMPL_CHOICES)
        if not isinstance(rotation_invariant, bool):
            raise ValueError(f'rotation_invariant must be True (PaPE-RI) or False (PaPE), '
                             f'got {rotation_invariant!r}.')
        if rotation_invariant and parabolas is not None:
            raise ValueError(f'PaPE-RI (rotation_invariant=True) has one parabola per head; '
                             f'remove parabolas={parabolas!r} from the config.')
        if parabolas is None:
            parabolas = 1 if rotation_invariant else DEFAULT_PARABOLAS
        if not _is_int(parabolas) or parabolas < 1:
            raise ValueError(f'parabolas must be an int >= 1 (parabolas per head; the '
                             f'authors use {DEFAULT_PARABOLAS}), got {parabolas!r}.')
        if not _is_int(width_multiple) or width_multiple < 1:
            raise ValueError(f'width_multiple must be an int >= 1 (8 as the authors, 1 for '
                             f'no rounding), got {width_multiple!r}.')
        self.parabolas = parabolas
        self.coords = coords
        self.prefix_position = prefix_position
        self.rotation_invariant = rotation_invariant
        self.impl = impl
        self.width_multiple = width_multiple
        self.layer_maps = nn.ModuleDict({
            str(layer): (RotationInvariantMaps(self.embed_dims, self.num_heads)
                         if rotation_invariant else
                         ParabolaMaps(self.embed_dims, self.num_heads, parabolas))
            for layer in self.layers
        })

    @property
    def num_factors(self) -> int:
        """Columns the bias adds to q and k, before rounding the width."""
        if self.rotation_invariant:
            return 2 * COORDINATE_DIMS + 1
        return 3 * self.parabolas + 2

    # ------------------------------------------------------------- the bias
    def parabola_factors(self, layer_index: int, grid: TokenGrid,
                         tokens: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """The columns whose products are block ``layer_index``'s bias ``b_ij``.

        Computed in float32 for half-precision tokens (else in their dtype),
        outside autocast, zero-padded so that ``head_dim`` plus their width is a
        multiple of ``width_multiple``; zero in the prefix rows for
        ``prefix_position='none'``.

        Args:
            layer_index (int): A block in :attr:`layers`.
            grid (TokenGrid): Layout of the ``N = P + H*W`` tokens.
            tokens (Tensor): ``(B, N, C)``, the attention's input.

        Returns:
            tuple[Tensor, Tensor]: ``(B, heads, N, F)`` query factors and
            ``(1, heads, N, F)`` key factors, ``b_ij = query_i . key_j``.
        """
        self._check_layer_and_tokens(layer_index, grid, tokens)
        maps = self.layer_maps[str(layer_index)]
        dtype = _compute_dtype(tokens.dtype)
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            tokens = tokens.to(dtype)
            coordinates = token_coordinates(grid, self.coords, tokens.device, dtype)
            if self.rotation_invariant:
                query_factors, key_factors = self._rotation_invariant_factors(
                    maps, coordinates, tokens)
            else:
                query_factors, key_factors = self._parabola_factors(maps, coordinates, tokens)
            if self.prefix_position == 'none':
                # Zero rows: a prefix query or key adds nothing to any logit.
                num_prefix = grid.num_prefix
                query_factors = F.pad(query_factors[:, :, num_prefix:], (0, 0, num_prefix, 0))
                key_factors = F.pad(key_factors[:, :, num_prefix:], (0, 0, num_prefix, 0))
            extra = -(self.head_dims + self.num_factors) % self.width_multiple
            return F.pad(query_factors, (0, extra)), F.pad(key_factors, (0, extra))

    def _parabola_factors(self, maps: ParabolaMaps, coordinates: Tensor,
                          tokens: Tensor) -> Tuple[Tensor, Tensor]:
        batch, num_tokens, _ = tokens.shape
        dtype = tokens.dtype
        # (heads, N, parabolas)
        positions = F.linear(coordinates, maps.position.weight.to(dtype))
        positions = positions.view(num_tokens, self.num_heads, self.parabolas).transpose(0, 1)
        shapes = F.linear(tokens, maps.curvature_slope.weight.to(dtype))
        shapes = shapes.view(batch, num_tokens, 2, self.num_heads, self.parabolas)
        curvature = F.softplus(shapes[:, :, 0].transpose(1, 2))  # (B, heads, N, parabolas)
        slope = shapes[:, :, 1].transpose(1, 2)
        squared = positions.square()
        query_factors = torch.cat([
            -(curvature * squared).sum(-1, keepdim=True), curvature, 2 * curvature * positions,
            (slope * positions).sum(-1, keepdim=True), slope
        ], dim=-1)
        ones = positions.new_ones(self.num_heads, num_tokens, 1)
        key_factors = torch.cat([ones, -squared, positions, ones, -positions], dim=-1)
        return query_factors, key_factors[None]

    def _rotation_invariant_factors(self, maps: RotationInvariantMaps, coordinates: Tensor,
                                    tokens: Tensor) -> Tuple[Tensor, Tensor]:
        dtype = tokens.dtype
        # (heads, N, 2): every head's scaled coordinates.
        scaled = maps.position_scales.to(dtype)[:, None, None] * coordinates
        # (heads, C) @ (B, C, N), heads-first from the start: F.linear followed
        # by a transpose fails in AOT autograd's backward (torch 2.13, aot_eager
        # backend), which views the transposed gradient as if contiguous.
        curvature = maps.curvature.weight.to(dtype) @ tokens.transpose(1, 2)
        curvature = F.softplus(curvature)[..., None]  # (B, heads, N, 1)
        squared = scaled.square()
        query_factors = torch.cat([
            -curvature * squared.sum(-1, keepdim=True),
            curvature.expand(-1, -1, -1, COORDINATE_DIMS), 2 * curvature * scaled
        ], dim=-1)
        ones = scaled.new_ones(*scaled.shape[:2], 1)
        key_factors = torch.cat([ones, -squared, scaled], dim=-1)
        return query_factors, key_factors[None]

    def attention_bias(self, layer_index: int, q: Tensor, k: Tensor, grid: TokenGrid,
                       tokens: Optional[Tensor] = None) -> Tensor:
        """The dense ``(B, heads, N, N)`` logit bias of block ``layer_index``.

        What the attention adds to ``q.k / sqrt(d)`` (the base class'
        convention): ``b_ij / sqrt(d)``, since PaPE scales its bias with the
        dot product; ``-inf`` where an image or prefix query meets a padding
        key. In the compute dtype (float32 for half inputs). ``q`` and ``k``
        are only checked against the grid; the bias depends on the grid and
        the tokens alone.
        """
        self._check_inputs(layer_index, q, grid, tokens)
        query_factors, key_factors = self.parabola_factors(layer_index, grid, tokens)
        with torch.autocast(device_type=q.device.type, enabled=False):
            bias = query_factors @ key_factors.transpose(-1, -2) * self.head_dims**-0.5
        blocked = padding_key_mask(grid)
        return bias if blocked is None else bias.masked_fill(blocked, float('-inf'))

    # -------------------------------------------------------------- attention
    def encoded_attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                          grid: TokenGrid, dropout_p: float = 0.,
                          tokens: Optional[Tensor] = None) -> Tensor:
        self._check_inputs(layer_index, q, grid, tokens)
        dtype = _compute_dtype(q.dtype)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q_, k_, v_, tokens_ = q.to(dtype), k.to(dtype), v.to(dtype), tokens.to(dtype)
            if self.impl == 'dense':
                bias = self.attention_bias(layer_index, q_, k_, grid, tokens_)
                out = attention_with_bias(q_, k_, v_, bias, dropout_p=dropout_p)
            else:
                out = self._fused_attention(layer_index, q_, k_, v_, grid, tokens_, dropout_p)
        return out.to(v.dtype)

    def _fused_attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                         grid: TokenGrid, tokens: Tensor, dropout_p: float) -> Tensor:
        query_factors, key_factors = self.parabola_factors(layer_index, grid, tokens)
        q_aug = torch.cat([q, query_factors], dim=-1)
        k_aug = torch.cat([k, key_factors.expand(k.shape[0], -1, -1, -1)], dim=-1)
        # Fused kernels need v's head dim to equal q's; otherwise PyTorch falls
        # back to the math kernel, which materialises the N x N logits.
        v_padded = F.pad(v, (0, q_aug.shape[-1] - v.shape[-1]))
        blocked = padding_key_mask(grid)
        out = F.scaled_dot_product_attention(
            q_aug, k_aug, v_padded, attn_mask=None if blocked is None else ~blocked,
            dropout_p=dropout_p, scale=self.head_dims**-0.5)
        return out[..., :v.shape[-1]]

    # ----------------------------------------------------------------- checks
    def _check_layer_and_tokens(self, layer_index: int, grid: TokenGrid,
                                tokens: Optional[Tensor]) -> None:
        if layer_index not in self.layers:
            raise ValueError(f'Layer {layer_index} has no PaPE maps (layers='
                             f'{list(self.layers)}).')
        if tokens is None:
            raise ValueError(
                'PaPE computes each query\'s curvatures and slopes from the tokens the '
                'attention reads, but none were given: pass tokens=<the (B, N, C) input of '
                'the qkv projection> to attention() / attention_bias() (PosEncViT does).')
        if tokens.dim() != 3 or tokens.shape[1:] != (grid.num_tokens, self.embed_dims):
            raise ValueError(
                f'tokens of shape {tuple(tokens.shape)} do not match the attention: expected '
                f'(B, {grid.num_tokens}, {self.embed_dims}) for a {grid.height}x{grid.width} '
                f'grid with {grid.num_prefix} prefix tokens and embed_dims={self.embed_dims}.')

    def _check_inputs(self, layer_index: int, q: Tensor, grid: TokenGrid,
                      tokens: Optional[Tensor]) -> None:
        self._check_layer_and_tokens(layer_index, grid, tokens)
        if q.shape[-2] != grid.num_tokens:
            raise ValueError(f'Got {q.shape[-2]} tokens, but the grid {grid.height}x'
                             f'{grid.width} with {grid.num_prefix} prefix tokens has '
                             f'{grid.num_tokens}.')
        if tokens.shape[0] != q.shape[0]:
            raise ValueError(f'tokens have batch {tokens.shape[0]}, but q has batch '
                             f'{q.shape[0]}; pass the tokens q, k and v were projected from.')
        pad_mask = grid.pad_mask
        if pad_mask is not None and tuple(pad_mask.shape) != (q.shape[0], *grid.hw):
            raise ValueError(f'grid.pad_mask has shape {tuple(pad_mask.shape)}, but the '
                             f'attention has batch {q.shape[0]} on a {grid.height}x'
                             f'{grid.width} grid: it must be (B, H, W).')

    def extra_repr(self) -> str:
        parabolas = 'rotation_invariant=True' if self.rotation_invariant else \
            f'parabolas={self.parabolas}'
        return (f'{super().extra_repr()}, {parabolas}, coords={self.coords!r}, '
                f'prefix_position={self.prefix_position!r}, impl={self.impl!r}, '
                f'width_multiple={self.width_multiple}, layers={list(self.layers)}')


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(option: str, value, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{option} must be one of {", ".join(map(repr, choices))}; '
                         f'got {value!r}.')


__all__ = ['PaPE', 'ParabolaMaps', 'RotationInvariantMaps', 'token_coordinates']
