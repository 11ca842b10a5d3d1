"""SaPE² math as plain tensor functions (arXiv 2505.09466).

Per layer, head and axis (x shown; y swaps rows and columns and has its own
table), with the equations of the project's method reference
(``position-encodings.md``, section 1):

1. gates inside a row: ``g_ij = sigmoid(q_i . k_j / sqrt(d))``;
2. contextual position of column m seen from token i (suffix sum to the row's
   right end): ``p_im = sum_{j in row(i), x_j >= x_m} g_ij``
   (:func:`contextual_positions`);
3. read p through a table ``e[0..M]`` by linear interpolation of the scalars
   ``z_i[p] = u_i . e[p]`` (``u = q`` or ``k``), giving the SaPE vector
   ``s_i = [z_i(p_i1), ..., z_i(p_iW)]`` (:func:`sape_vectors`);
4. bias ``b_in = ||s^x_i - s^x_n|| + ||s^y_i - s^y_n||`` between any two patch
   tokens (:func:`sape_bias`, from the matmul-form
   :func:`squared_distance_factors`); class / register tokens get zero bias.

The functions take tensors and plain ints, so that kernels and analysis code
can use them without a module; :class:`mmsape.models.SaPE2` holds the tables
and chooses how the bias enters attention (dense, :mod:`.block_attention`,
or :func:`fused_squared_distance_qk`).
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# Fused attention kernels want the head dim to be a multiple of 8.
_FUSED_DIM_MULTIPLE = 8


def contextual_positions(queries: Tensor, keys: Tensor, gate_scale: float) -> Tensor:
    """Contextual positions along one axis of the grid.

    Args:
        queries (Tensor): ``(..., L, d)`` queries of the tokens of one line
            (a row for the x axis, a column for the y axis).
        keys (Tensor): ``(..., L, d)`` keys of the same line.
        gate_scale (float): Multiplier of the gate logits ``q.k``.

    Returns:
        Tensor: ``(..., L, L)``; entry ``[..., i, m]`` is
        ``p_im = sum_{j >= m} sigmoid(gate_scale * q_i . k_j)``, the gated count of
        the line's tokens from position m to the line's end, seen from token i.
    """
    gates = torch.sigmoid(torch.matmul(queries, keys.transpose(-1, -2)).mul_(gate_scale))
    # Suffix sum over j as one matmul with the triangle [j >= m]: on CPU this
    # is several times faster, forward and backward, than flip / cumsum / flip.
    line_length = keys.shape[-2]
    suffix = torch.ones(line_length, line_length, dtype=gates.dtype, device=gates.device).tril_()
    return torch.matmul(gates, suffix)


def table_positions(positions: Tensor, num_positions: int, line_length: int,
                    position_mode: str) -> Tensor:
    """Map contextual positions to fractional indices of the table, in [0, M-1].

    Args:
        positions (Tensor): Contextual positions, any shape.
        num_positions (int): M.
        line_length (int): L, tokens per line along this axis (W for x, H for y).
        position_mode (str): ``'clamp'`` keeps the reference behaviour (positions
            saturate at M-1); ``'relative'`` first rescales by ``(M-1)/L`` so that a
            full line spans the same part of the table at every grid size.

    Returns:
        Tensor: Positions clamped to ``[0, M-1]``.
    """
    if position_mode == 'relative':
        positions = positions * ((num_positions - 1) / line_length)
    return positions.clamp(0, num_positions - 1)


def interpolate_table(logits_at_integers: Tensor, positions: Tensor) -> Tensor:
    """Linearly interpolate per-integer scalars at fractional positions.

    Args:
        logits_at_integers (Tensor): ``(..., T)``; ``[..., t]`` is ``u . e[t]``.
        positions (Tensor): ``(..., L)`` fractional positions in ``[0, T-1]``; the
            leading dims must match those of ``logits_at_integers``.

    Returns:
        Tensor: ``(..., L)``, the interpolated scalars. The gradient flows into the
        positions through the interpolation weight, as in CoPE.
    """
    index = positions.detach().floor()
    weight = positions - index
    index = index.long()
    below = logits_at_integers.gather(-1, index)
    # below + w * (above - below): one gather of the steps between integers
    # instead of a second gather and two products. At the last integer w = 0;
    # the clamp only keeps the (then unused) step index in range.
    steps = logits_at_integers.diff(dim=-1)
    return below + weight * steps.gather(-1, index.clamp(max=steps.shape[-1] - 1))


def axis_sape_vectors(queries: Tensor, keys: Tensor, embed_source: Tensor, table: Tensor,
                      gate_scale: float, position_mode: str) -> Tensor:
    """SaPE vectors of every token along one axis.

    Args:
        queries (Tensor): ``(..., lines, L, d)``, grid tokens grouped by line.
        keys (Tensor): ``(..., lines, L, d)``.
        embed_source (Tensor): ``(..., lines, L, d)``, the ``u`` dotted with the
            table (the queries or the keys).
        table (Tensor): ``(M+1, d)`` position embeddings of this axis.
        gate_scale (float): See :func:`contextual_positions`.
        position_mode (str): See :func:`table_positions`.

    Returns:
        Tensor: ``(..., lines, L, L)``; ``[..., i, :]`` is token i's vector.
    """
    line_length = queries.shape[-2]
    num_positions = table.shape[0] - 1
    positions = table_positions(
        contextual_positions(queries, keys, gate_scale), num_positions, line_length,
        position_mode)
    logits_at_integers = torch.matmul(embed_source, table.transpose(0, 1))
    return interpolate_table(logits_at_integers, positions)


def sape_vectors(q: Tensor, k: Tensor, tables: Tensor, height: int, width: int,
                 num_prefix: int, embed_with: str, gate_scale: float,
                 position_mode: str) -> Tuple[Tensor, Tensor]:
    """SaPE vectors of the patch tokens along x and y.

    Args:
        q (Tensor): ``(B, heads, P + H*W, d)`` queries.
        k (Tensor): ``(B, heads, P + H*W, d)`` keys.
        tables (Tensor): ``(2, M+1, d)``; ``tables[0]`` is read along rows (x),
            ``tables[1]`` along columns (y).
        height (int): H, rows of the patch grid.
        width (int): W, columns of the patch grid.
        num_prefix (int): P, class / register tokens in front of the grid.
        embed_with (str): ``'query'`` or ``'key'``, the ``u`` in ``u . e[p]``.
        gate_scale (float): See :func:`contextual_positions`.
        position_mode (str): See :func:`table_positions`.

    Returns:
        tuple[Tensor, Tensor]: ``(B, heads, H*W, W)`` x vectors and
        ``(B, heads, H*W, H)`` y vectors, patch tokens in row-major order.
    """
    rows_q = q[..., num_prefix:, :].unflatten(-2, (height, width))
    rows_k = k[..., num_prefix:, :].unflatten(-2, (height, width))
    rows_u = rows_q if embed_with == 'query' else rows_k
    x_vectors = axis_sape_vectors(rows_q, rows_k, rows_u, tables[0], gate_scale,
                                  position_mode)
    cols_q, cols_k, cols_u = (t.transpose(-3, -2) for t in (rows_q, rows_k, rows_u))
    y_vectors = axis_sape_vectors(cols_q, cols_k, cols_u, tables[1], gate_scale,
                                  position_mode)
    # y vectors come out as (column, row, H); put tokens back in row-major order.
    return x_vectors.flatten(-3, -2), y_vectors.transpose(-3, -2).flatten(-3, -2)


def squared_distance_factors(vectors: Tensor,
                             num_prefix: int = 0) -> Tuple[Tensor, Tensor]:
    """Factors whose product is the squared-distance matrix of ``vectors``.

    ``query_factors = [-2 s_i, |s_i|^2, 1]`` and ``key_factors = [s_n, 1, |s_n|^2]``
    give ``query_factors @ key_factors.T = ||s_i - s_n||^2``: one matmul yields
    the (N, N) matrix with no further full passes over it (which dominate the
    cost) and with memory ``N * N`` instead of the ``N * N * L`` of explicit
    differences. ``num_prefix`` all-zero rows go in front: prefix tokens then get
    exactly 0 in their rows and columns. The matmul form is exact up to rounding
    of order ``eps * |s|^2``, so squared distances of (near-)identical vectors
    come out a few ulps from 0, possibly negative (see :func:`rounding_floor`).

    Args:
        vectors (Tensor): ``(..., N_patch, L)``.
        num_prefix (int): Zero rows to put in front. Defaults to 0.

    Returns:
        tuple[Tensor, Tensor]: ``(..., num_prefix + N_patch, L + 2)`` query and
        key factors.
    """
    if num_prefix:
        vectors = F.pad(vectors, (0, 0, num_prefix, 0))
    squared_norms = vectors.pow(2).sum(-1, keepdim=True)
    # The constant factor is 1 for patch tokens and 0 for prefix tokens, whose
    # factor rows are then all zero.
    is_patch = torch.ones_like(vectors[..., :1])
    is_patch[..., :num_prefix, :] = 0
    query_factors = torch.cat([vectors * -2, squared_norms, is_patch], dim=-1)
    key_factors = torch.cat([vectors, is_patch, squared_norms], dim=-1)
    return query_factors, key_factors


def pairwise_squared_l2(query_factors: Tensor, key_factors: Tensor) -> Tensor:
    """``(..., Nq, Nk)`` squared distances from :func:`squared_distance_factors`."""
    return torch.matmul(query_factors, key_factors.transpose(-1, -2))


def rounding_floor(key_factors: Tensor) -> Tensor:
    """Squared distances that the matmul form cannot tell from 0.

    The rounding error of ``query_factors @ key_factors.T`` is about
    ``0.6 * sqrt(L) * eps * (|s_i|^2 + |s_n|^2)`` at worst (measured); the floor
    is three times that, bounded with the largest ``|s_n|^2``, which the key
    factors hold in their last column.

    Args:
        key_factors (Tensor): ``(..., Nk, L + 2)`` from
            :func:`squared_distance_factors`, every key of the attention.

    Returns:
        Tensor: ``(..., 1, 1)``, without gradient.
    """
    length = key_factors.shape[-1] - 2
    largest_squared_norm = key_factors[..., -1].detach().amax(dim=-1)[..., None, None]
    return largest_squared_norm * (4 * math.sqrt(length + 2) * torch.finfo(key_factors.dtype).eps)


class _SafeSqrt(torch.autograd.Function):
    """``sqrt`` of squared distances, 0 with gradient 0 at or below a floor."""

    @staticmethod
    def forward(ctx, squared: Tensor, floor: Tensor) -> Tensor:
        root = torch.where(squared > floor, squared, 0.).sqrt_()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:
        root, = ctx.saved_tensors
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        return torch.where(root > 0, grad * 0.5 / root, zero), None


def safe_sqrt(squared: Tensor, floor) -> Tensor:
    """Distances from squared distances, exactly 0 with gradient 0 below ``floor``.

    ``d sqrt(x)/dx`` is infinite at 0, and every token is at distance 0 from
    itself. Below the rounding floor of the matmul form (:func:`rounding_floor`)
    a squared distance is noise: its root would be a spurious ~``sqrt(eps)``
    and ``0.5 / root`` would blow the noise up in the gradient. Such entries give
    0 and the subgradient of a norm at 0, i.e. 0; above the floor the gradient
    is ``0.5 / root``, bounded by ``0.5 / sqrt(floor)``. One autograd function
    instead of ``where``/``clamp`` guards saves full passes over the (N, N)
    tensor. Not twice differentiable.

    Args:
        squared (Tensor): Squared distances.
        floor (Tensor | float): Broadcastable threshold, >= 0.
    """
    if not torch.is_tensor(floor):
        floor = torch.tensor(floor, dtype=squared.dtype, device=squared.device)
    return _SafeSqrt.apply(squared, floor)


def pairwise_l2(query_factors: Tensor, key_factors: Tensor) -> Tensor:
    """``(..., Nq, Nk)`` distances from :func:`squared_distance_factors`, with
    finite gradients; see :func:`safe_sqrt` and :func:`rounding_floor`."""
    return safe_sqrt(pairwise_squared_l2(query_factors, key_factors),
                     rounding_floor(key_factors))


def sape_bias(query_factors: Sequence[Tensor], key_factors: Sequence[Tensor],
              distance: str, sign: float = 1.) -> Tensor:
    """The SaPE² bias from per-axis :func:`squared_distance_factors`.

    Args:
        query_factors (Sequence[Tensor]): Per axis, ``(..., Nq, L_axis + 2)``.
        key_factors (Sequence[Tensor]): Per axis, ``(..., Nk, L_axis + 2)``.
        distance (str): ``'squared'`` sums the squared distances of the axes (one
            matmul on the concatenated factors); otherwise the distances (one
            matmul and root per axis).
        sign (float): +1 (published) or -1 (ablation). Defaults to 1.

    Returns:
        Tensor: ``(..., Nq, Nk)``.
    """
    if distance == 'squared':
        # The sign goes on the small factor, not on the (Nq, Nk) product.
        return pairwise_squared_l2(torch.cat(list(query_factors), dim=-1) * sign,
                                   torch.cat(list(key_factors), dim=-1))
    bias = pairwise_l2(query_factors[0], key_factors[0])
    for query_factor, key_factor in zip(query_factors[1:], key_factors[1:]):
        bias = bias + pairwise_l2(query_factor, key_factor)
    return bias if sign > 0 else -bias


def fused_squared_distance_qk(q: Tensor, k: Tensor, query_factors: Sequence[Tensor],
                              key_factors: Sequence[Tensor],
                              sign: float = 1.) -> Tuple[Tensor, Tensor]:
    """Augment q and k so that ``q_aug . k_aug = q.k / sqrt(d) + sign * ||s_i - s_n||^2``.

    ``q_aug = [q / sqrt(d), sign * [-2 s_i, |s_i|^2, 1] per axis]`` and
    ``k_aug = [k, [s_n, 1, |s_n|^2] per axis]``, the factors of
    :func:`squared_distance_factors`; their all-zero prefix rows zero the bias of
    prefix tokens in rows and columns. The width is padded with zeros to a
    multiple of 8, which fused kernels want.

    Args:
        q (Tensor): ``(B, heads, P + H*W, d)``.
        k (Tensor): ``(B, heads, P + H*W, d)``.
        query_factors (Sequence[Tensor]): Per axis, ``(B, heads, P + H*W, L + 2)``.
        key_factors (Sequence[Tensor]): Per axis, ``(B, heads, P + H*W, L + 2)``.
        sign (float): +1 or -1, the sign of the bias. Defaults to 1.

    Returns:
        tuple[Tensor, Tensor]: ``q_aug, k_aug`` in q's dtype, for attention with
        ``scale=1``.
    """
    head_dims = q.shape[-1]
    query_parts = [q * head_dims**-0.5] + [
        (f * sign if sign != 1 else f).to(q.dtype) for f in query_factors]
    key_parts = [k] + [f.to(k.dtype) for f in key_factors]
    pad_width = -sum(part.shape[-1] for part in query_parts) % _FUSED_DIM_MULTIPLE
    if pad_width:
        # Part of the one concatenation: a separate pad would copy q_aug again.
        zeros = q.new_zeros(*q.shape[:-1], pad_width)
        query_parts.append(zeros)
        key_parts.append(zeros)
    return torch.cat(query_parts, dim=-1), torch.cat(key_parts, dim=-1)


__all__ = [
    'contextual_positions', 'table_positions', 'interpolate_table',
    'axis_sape_vectors', 'sape_vectors', 'squared_distance_factors', 'pairwise_squared_l2',
    'rounding_floor', 'safe_sqrt', 'pairwise_l2', 'sape_bias', 'fused_squared_distance_qk'
]
