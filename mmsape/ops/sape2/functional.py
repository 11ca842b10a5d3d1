"""SaPE² math as plain tensor functions (arXiv 2505.09466).

Per layer, head and axis (x shown; y swaps rows and columns and has its own
table), with the equations of ``docs/method.md#8-sape-published`` ((8.1)-(8.5))
and ``docs/method.md#9-sape-query-relative`` ((9.1)-(9.6)):

1. gates inside a row: ``g_ij = sigmoid(q_i . k_j / sqrt(d))``;
2. contextual position of column m seen from token i
   (:func:`contextual_positions`), either as published, the gated count from m
   to the row's right end, ``p_im = sum_{j in row(i), x_j >= x_m} g_ij``
   (``count_from='row_end'``), or query-relative, the signed gated count
   between the query and m, ``r_i(m) = sign(x_m - x_i) * sum_{j in (x_i, x_m]} g_ij``
   (``count_from='query'``, eq. (9.1));
3. read the positions through a table by linear interpolation of the scalars
   at its integer positions, ``z_i[t] = u_i . e[t]`` (``u = q`` or ``k``) or
   per-head scalars ``z[t] = e_h[t]``, giving the SaPE vector
   ``s_i = [z_i(p_i1), ..., z_i(p_iW)]`` (:func:`sape_vectors`);
4. the bias between two patch tokens, from the vectors of both axes: the
   published distance ``||s^x_i - s^x_n|| + ||s^y_i - s^y_n||``
   (:func:`sape_bias`, from the matmul-form :func:`squared_distance_factors`),
   or the lookup ``s^x_i[x_n] + s^y_i[y_n]`` (:func:`lookup_factors`); class /
   register tokens get zero bias.

The functions take tensors and plain ints, so that kernels and analysis code
can use them without a module; :class:`mmsape.models.SaPE2` holds the tables
and chooses how the bias enters attention (dense, :mod:`.block_attention`,
:mod:`.lookup_attention` or :func:`fused_squared_distance_qk`).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# Fused attention kernels want the head dim to be a multiple of 8.
_FUSED_DIM_MULTIPLE = 8


#: How a contextual position is counted: ``'row_end'`` from the column to the
#: line's end (published), ``'query'`` between the query and the column, signed.
COUNT_FROM_CHOICES = ('row_end', 'query')


def contextual_positions(queries: Tensor, keys: Tensor, gate_scale: float,
                         count_from: str = 'row_end',
                         key_weights: Optional[Tensor] = None) -> Tensor:
    """Contextual positions along one axis of the grid.

    Args:
        queries (Tensor): ``(..., L, d)`` queries of the tokens of one line
            (a row for the x axis, a column for the y axis).
        keys (Tensor): ``(..., L, d)`` keys of the same line.
        gate_scale (float): Multiplier of the gate logits ``q.k``.
        count_from (str): ``'row_end'`` (published): entry ``[..., i, m]`` is
            ``p_im = sum_{j >= m} g_ij``, the gated count of the line's tokens
            from position m to the line's end. ``'query'``: the signed gated
            count between token i (at position a) and position m,
            ``r_im = sum_{a < j <= m} g_ij`` right of i, ``-sum_{m <= j < a} g_ij``
            left of it, 0 at ``m = a``. Defaults to ``'row_end'``.
        key_weights (Tensor, optional): ``(..., L)`` multipliers of the gates
            of the line's tokens (0 for padding cells, which then count
            nothing); broadcast over the queries. Defaults to None (all 1).

    Returns:
        Tensor: ``(..., L, L)`` positions; ``g_ij = sigmoid(gate_scale * q_i . k_j)``.
    """
    gates = torch.sigmoid(torch.matmul(queries, keys.transpose(-1, -2)).mul_(gate_scale))
    if key_weights is not None:
        gates = gates * key_weights.unsqueeze(-2)
    line_length = keys.shape[-2]
    ones = torch.ones(line_length, line_length, dtype=gates.dtype, device=gates.device)
    if count_from == 'row_end':
        # Suffix sum over j as one matmul with the triangle [j >= m]: on CPU this
        # is several times faster, forward and backward, than flip / cumsum / flip.
        return torch.matmul(gates, ones.tril())
    # Inclusive prefix sums P_im = sum_{j <= m} g_ij, one matmul with [j <= m].
    # Right of the query (m >= a) r = P_im - P_ia; left of it the count runs
    # over [m, a), i.e. r = (P_im - g_im) - (P_ia - g_ia).
    prefix = torch.matmul(gates, ones.triu())
    own_prefix = prefix.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
    own_gate = gates.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
    left_of_query = ones.tril(diagonal=-1)  # [i, m] = 1 where m < a
    return prefix - own_prefix + left_of_query * (own_gate - gates)


def table_positions(positions: Tensor, num_positions: int, line_length: int,
                    position_mode: str, signed: bool = False) -> Tensor:
    """Map contextual positions to fractional row indices of the table.

    Args:
        positions (Tensor): Contextual positions, any shape.
        num_positions (int): M, positions per side: the table holds
            ``e[0..M-1]`` (M rows), or ``e[-(M-1)..M-1]`` (2M-1 rows) when
            ``signed``.
        line_length (int): L, tokens per line along this axis (W for x, H for y).
        position_mode (str): ``'clamp'`` keeps the reference behaviour (positions
            saturate at +-(M-1)); ``'relative'`` first rescales by ``(M-1)/L`` so
            that a full line spans the same part of the table at every grid size.
        signed (bool): Whether positions are signed (query-relative).
            Defaults to False.

    Returns:
        Tensor: Row indices in ``[0, M-1]`` (``[0, 2M-2]`` when signed, where
        index ``M-1`` is position 0).
    """
    last = num_positions - 1
    if position_mode == 'relative':
        positions = positions * (last / line_length)
    if signed:
        return positions.clamp(-last, last) + last
    return positions.clamp(0, last)


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


def table_logits(embed_source: Optional[Tensor], table: Tensor, like: Tensor) -> Tensor:
    """The scalars at the table's integer positions, one row per token.

    Args:
        embed_source (Tensor, optional): ``(B, heads, ..., L, d)``, the ``u`` of
            ``u . e[t]``; None when ``table`` holds per-head scalars.
        table (Tensor): ``(T, d)`` embeddings, or ``(T, heads)`` per-head scalars.
        like (Tensor): A ``(B, heads, ..., L, *)`` tensor of the tokens, for the
            shape of the per-head scalars.

    Returns:
        Tensor: ``(B, heads, ..., L, T)``.
    """
    if embed_source is not None:
        return torch.matmul(embed_source, table.transpose(0, 1))
    batch, heads, *rest = like.shape[:-1]
    per_head = table.transpose(0, 1).reshape(1, heads, *([1] * len(rest)), -1)
    return per_head.expand(batch, heads, *rest, -1)


def parabola_logits(embed_source: Tensor, coefficients: Tensor, positions: Tensor) -> Tensor:
    """Contextual positions read by a parabola instead of a table (mmsape's
    extension, in PaPE's form): ``z_i(r) = -softplus(u_i . w_a) r^2 + (u_i . w_b) r``.

    Args:
        embed_source (Tensor): ``(B, heads, ..., L, d)``, the ``u`` of each token.
        coefficients (Tensor): ``(2, d)``: ``w_a`` (curvature) and ``w_b`` (slope).
        positions (Tensor): ``(B, heads, ..., L, L)`` contextual positions, not
            clamped: a parabola is defined at every count.

    Returns:
        Tensor: ``(B, heads, ..., L, L)``.
    """
    curvature, slope = torch.matmul(embed_source, coefficients.transpose(0, 1)).unbind(-1)
    return (-F.softplus(curvature)[..., None] * positions + slope[..., None]) * positions


def axis_sape_vectors(queries: Tensor, keys: Tensor, embed_source: Optional[Tensor],
                      table: Tensor, gate_scale: float, position_mode: str,
                      count_from: str = 'row_end',
                      key_weights: Optional[Tensor] = None,
                      reading: str = 'table') -> Tensor:
    """SaPE vectors of every token along one axis.

    Args:
        queries (Tensor): ``(B, heads, lines, L, d)``, grid tokens grouped by line.
        keys (Tensor): ``(B, heads, lines, L, d)``.
        embed_source (Tensor, optional): ``(B, heads, lines, L, d)``, the ``u``
            dotted with the table (the queries or the keys); None when
            ``table`` holds per-head scalars.
        table (Tensor): This axis' table, ``(T, d)`` or ``(T, heads)``: T = M
            rows, or 2M-1 rows ``e[-(M-1)..M-1]`` for ``count_from='query'``.
        gate_scale (float): See :func:`contextual_positions`.
        position_mode (str): See :func:`table_positions`.
        count_from (str): See :func:`contextual_positions`. Defaults to
            ``'row_end'``.
        key_weights (Tensor, optional): See :func:`contextual_positions`.
        reading (str): ``'table'``: interpolate the table (the paper's way).
            ``'parabola'``: ``table`` is ``(2, d)`` parabola coefficients
            (:func:`parabola_logits`); positions are then only rescaled by
            ``position_mode='relative'``, never clamped. Defaults to ``'table'``.

    Returns:
        Tensor: ``(B, heads, lines, L, L)``; ``[..., i, :]`` is token i's vector.
    """
    line_length = queries.shape[-2]
    if reading == 'parabola':
        positions = contextual_positions(queries, keys, gate_scale, count_from, key_weights)
        if position_mode == 'relative':
            positions = positions / line_length
        return parabola_logits(embed_source, table, positions)
    signed = count_from == 'query'
    num_positions = (table.shape[0] + 1) // 2 if signed else table.shape[0]
    positions = table_positions(
        contextual_positions(queries, keys, gate_scale, count_from, key_weights),
        num_positions, line_length, position_mode, signed)
    return interpolate_table(table_logits(embed_source, table, queries), positions)


def sape_vectors(q: Tensor, k: Tensor, tables: Tensor, height: int, width: int,
                 num_prefix: int, embed_with: Optional[str], gate_scale: float,
                 position_mode: str, count_from: str = 'row_end',
                 pad_mask: Optional[Tensor] = None,
                 reading: str = 'table') -> Tuple[Tensor, Tensor]:
    """SaPE vectors of the patch tokens along x and y.

    Args:
        q (Tensor): ``(B, heads, P + H*W, d)`` queries.
        k (Tensor): ``(B, heads, P + H*W, d)`` keys.
        tables (Tensor): ``(2, T, d)`` embeddings or ``(2, T, heads)`` per-head
            scalars; ``tables[0]`` is read along rows (x), ``tables[1]`` along
            columns (y). See :func:`axis_sape_vectors` for T.
        height (int): H, rows of the patch grid.
        width (int): W, columns of the patch grid.
        num_prefix (int): P, class / register tokens in front of the grid.
        embed_with (str, optional): ``'query'`` or ``'key'``, the ``u`` in
            ``u . e[p]``; None when the tables hold per-head scalars.
        gate_scale (float): See :func:`contextual_positions`.
        position_mode (str): See :func:`table_positions`.
        count_from (str): See :func:`contextual_positions`. Defaults to
            ``'row_end'``.
        pad_mask (Tensor, optional): ``(B, H, W)`` bool, True on padding cells,
            whose gates are 0. Defaults to None.
        reading (str): See :func:`axis_sape_vectors`. Defaults to ``'table'``.

    Returns:
        tuple[Tensor, Tensor]: ``(B, heads, H*W, W)`` x vectors and
        ``(B, heads, H*W, H)`` y vectors, patch tokens in row-major order.
    """
    rows_q = q[..., num_prefix:, :].unflatten(-2, (height, width))
    rows_k = k[..., num_prefix:, :].unflatten(-2, (height, width))
    rows_u = {'query': rows_q, 'key': rows_k, None: None}[embed_with]
    row_weights = None if pad_mask is None else (~pad_mask).to(q.dtype).unsqueeze(1)
    x_vectors = axis_sape_vectors(rows_q, rows_k, rows_u, tables[0], gate_scale,
                                  position_mode, count_from, row_weights, reading)
    cols_q, cols_k = (t.transpose(-3, -2) for t in (rows_q, rows_k))
    cols_u = None if rows_u is None else rows_u.transpose(-3, -2)
    col_weights = None if row_weights is None else row_weights.transpose(-2, -1)
    y_vectors = axis_sape_vectors(cols_q, cols_k, cols_u, tables[1], gate_scale,
                                  position_mode, count_from, col_weights, reading)
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


def grid_coordinates(height: int, width: int, device=None) -> Tuple[Tensor, Tensor]:
    """Column and row of every patch token of an ``H x W`` grid in row-major order,
    two ``(H*W,)`` long tensors."""
    cells = torch.arange(height * width, device=device)
    return cells % width, cells.div(width, rounding_mode='floor')


def lookup_bias(x_vectors: Tensor, y_vectors: Tensor, height: int, width: int,
                num_prefix: int = 0) -> Tensor:
    """The lookup bias ``b_in = s^x_i[x_n] + s^y_i[y_n]`` as a dense tensor.

    Args:
        x_vectors (Tensor): ``(..., H*W, W)`` SaPE vectors along x.
        y_vectors (Tensor): ``(..., H*W, H)`` SaPE vectors along y.
        height (int): H.
        width (int): W.
        num_prefix (int): Prefix tokens, whose rows and columns get 0.
            Defaults to 0.

    Returns:
        Tensor: ``(..., P + H*W, P + H*W)``.
    """
    columns, rows = grid_coordinates(height, width, x_vectors.device)
    bias = x_vectors.index_select(-1, columns) + y_vectors.index_select(-1, rows)
    return F.pad(bias, (num_prefix, 0, num_prefix, 0)) if num_prefix else bias


def lookup_factors(x_vectors: Tensor, y_vectors: Tensor, height: int, width: int,
                   num_prefix: int = 0) -> Tuple[Tensor, Tensor]:
    """Factors whose product is the lookup bias of :func:`lookup_bias`.

    ``query_factors = [s^x_i, s^y_i]`` and ``key_factors = [onehot(x_n), onehot(y_n)]``
    give ``query_factors @ key_factors.T = s^x_i[x_n] + s^y_i[y_n]``, so that any
    kernel of a bias in matmul form computes the lookup bias: plain attention on
    augmented q and k (:func:`fused_squared_distance_qk`, which only
    concatenates), or the block kernels with ``root=False``. Prefix tokens get
    all-zero rows in both.

    Args:
        x_vectors (Tensor): ``(..., H*W, W)``.
        y_vectors (Tensor): ``(..., H*W, H)``.
        height (int): H.
        width (int): W.
        num_prefix (int): Prefix tokens. Defaults to 0.

    Returns:
        tuple[Tensor, Tensor]: ``(..., P + H*W, W + H)`` query factors and key
        factors (the latter expanded from one ``(P + H*W, W + H)`` matrix).
    """
    query_factors = F.pad(torch.cat([x_vectors, y_vectors], dim=-1),
                          (0, 0, num_prefix, 0))
    columns, rows = grid_coordinates(height, width, x_vectors.device)
    one_hot = torch.cat([F.one_hot(columns, width), F.one_hot(rows, height)], dim=-1)
    key_factors = F.pad(one_hot.to(x_vectors.dtype), (0, 0, num_prefix, 0))
    return query_factors, key_factors.expand_as(query_factors)


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
    multiple of 8, which fused kernels want. Any bias in matmul form works the
    same way: with the factors of :func:`lookup_factors` the product is
    ``q.k / sqrt(d) + sign * (s^x_i[x_n] + s^y_i[y_n])``.

    Args:
        q (Tensor): ``(B, heads, P + H*W, d)``.
        k (Tensor): ``(B, heads, P + H*W, d)``.
        query_factors (Sequence[Tensor]): Per axis (or one for all axes),
            ``(B, heads, P + H*W, F)``, e.g. ``F = L + 2``.
        key_factors (Sequence[Tensor]): Matching ``(B, heads, P + H*W, F)``.
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
    'COUNT_FROM_CHOICES', 'contextual_positions', 'table_positions', 'interpolate_table',
    'table_logits', 'axis_sape_vectors', 'sape_vectors', 'squared_distance_factors',
    'grid_coordinates', 'lookup_bias', 'lookup_factors', 'pairwise_squared_l2',
    'rounding_floor', 'safe_sqrt', 'pairwise_l2', 'sape_bias', 'fused_squared_distance_qk'
]
