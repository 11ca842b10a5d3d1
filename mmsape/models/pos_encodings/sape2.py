"""SaPE²: 2D Semantic-Aware Position Encoding (arXiv 2505.09466).

SaPE² is a content-dependent attention-logit bias, the 2D non-causal form of
CoPE. Every choice the paper leaves open follows the project's method reference
(``position-encodings.md``, section 1). Per layer, head and axis (x shown; y
swaps rows and columns and has its own table):

1. gates inside a row: ``g_ij = sigmoid(q_i . k_j / sqrt(d))``;
2. contextual position of column m seen from token i (suffix sum to the row's
   right end): ``p_im = sum_{j in row(i), x_j >= x_m} g_ij``;
3. read p through a table ``e[0..M]`` by linear interpolation of the scalars
   ``z_i[p] = u_i . e[p]`` (``u = q`` or ``k``), giving the SaPE vector
   ``s_i = [z_i(p_i1), ..., z_i(p_iW)]``;
4. bias ``b_in = ||s^x_i - s^x_n|| + ||s^y_i - s^y_n||`` between any two patch
   tokens, added to ``q.k / sqrt(d)``; class / register tokens get zero bias.

Steps 1-3 cost O(N * W) per head and axis. The pairwise step 4 is the method's
cost: the paper materialises a (B, heads, N, N) bias. Besides that reference
(``impl='dense'``) this module offers an exact path whose memory is linear in N
(``impl='chunked'``, a FlashAttention-style autograd function over query blocks,
:mod:`.sape2_kernels`) and, for the squared distance, a variant that plain
fused attention computes without any N x N tensor (``impl='fused'``).
"""
import math
from functools import partial
from typing import List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from mmsape.registry import POS_ENCODINGS

from .base import BasePositionEncoding, TokenGrid, attention_with_bias, layers_from_option
from .sape2_kernels import sape2_block_attention, uses_cpu_kernel

EMBED_WITH_CHOICES = ('query', 'key')
POSITION_MODE_CHOICES = ('clamp', 'relative')
DISTANCE_CHOICES = ('l2', 'rms', 'squared')
IMPL_CHOICES = ('auto', 'dense', 'chunked', 'fused')

# Fused kernels want the head dim to be a multiple of 8.
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


def sape_vectors(q: Tensor, k: Tensor, tables: Tensor, grid: TokenGrid, embed_with: str,
                 gate_scale: float, position_mode: str) -> Tuple[Tensor, Tensor]:
    """SaPE vectors of the patch tokens along x and y.

    Args:
        q (Tensor): ``(B, heads, P + H*W, d)`` queries.
        k (Tensor): ``(B, heads, P + H*W, d)`` keys.
        tables (Tensor): ``(2, M+1, d)``; ``tables[0]`` is read along rows (x),
            ``tables[1]`` along columns (y).
        grid (TokenGrid): Token layout.
        embed_with (str): ``'query'`` or ``'key'``, the ``u`` in ``u . e[p]``.
        gate_scale (float): See :func:`contextual_positions`.
        position_mode (str): See :func:`table_positions`.

    Returns:
        tuple[Tensor, Tensor]: ``(B, heads, H*W, W)`` x vectors and
        ``(B, heads, H*W, H)`` y vectors, patch tokens in row-major order.
    """
    height, width, num_prefix = grid.height, grid.width, grid.num_prefix
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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Distances of half-precision vectors lose too much to cancellation."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@POS_ENCODINGS.register_module()
class SaPE2(BasePositionEncoding):
    """2D Semantic-Aware Position Encoding, an attention-logit bias.

    See the module docstring for the equations. Every layer in ``layers`` owns
    one ``(2, M+1, head_dim)`` parameter ``position_tables.layer_<index>``
    (row 0: the x table, read along rows; row 1: the y table), shared across
    heads. The tables are excluded from weight decay, like absolute position
    embeddings and relative-position bias tables. Note: positions never exceed
    M-1 (both position modes clamp there), so ``e[M]`` exists as the method
    reference specifies but receives no gradient.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads; head dim ``d = C // num_heads``.
        num_layers (int): Transformer blocks in the backbone.
        base_grid (tuple[int, int]): Patch grid of the configured image size
            (unused: SaPE² has no per-cell tables). Defaults to (14, 14).
        num_prefix_tokens (int): Class / register tokens. The layout actually
            used is the :class:`TokenGrid` passed to :meth:`attention`.
            Defaults to 1.
        num_positions (int): M, positions per axis; the tables hold M+1 rows
            initialised with a truncated normal of std 0.02. Defaults to 10.
        embed_with (str): Which vector reads the table, ``z_i[p] = u_i . e[p]``:
            ``'query'`` (u = q, the paper's appendix code) or ``'key'`` (u = k).
            Defaults to ``'query'``.
        scale_gates (bool): Gate logits ``q.k / sqrt(d)`` as in the reference
            code; False uses ``q.k`` as in the paper's equation. Defaults to True.
        negative_bias (bool): Subtract the distances instead of adding them
            (ablation; the published sign is +). Defaults to False.
        layers (Sequence[int], optional): Blocks that use SaPE² (negatives count
            from the end); the others attend plainly. None means every block.
            Defaults to None.
        position_mode (str): ``'clamp'``: positions clamped to [0, M-1] (the
            reference; positions saturate in rows longer than M). ``'relative'``:
            positions along an axis are first scaled by ``(M-1)/L``, L the row
            (or column) length, so a full line spans the same table range at any
            resolution. Defaults to ``'clamp'``.
        distance (str): ``'l2'``: the paper's ``||s_i - s_n||_2`` per axis.
            ``'rms'``: ``||s_i - s_n||_2 / sqrt(L)``, which does not grow with the
            line length L. ``'squared'``: ``||s_i - s_n||^2``; a DIFFERENT model
            (not the paper's), chosen because fused attention can compute it
            exactly (see ``impl='fused'``). Defaults to ``'l2'``.
        impl (str): How the bias enters attention; ``'dense'`` and ``'chunked'``
            give the same result up to rounding.

            - ``'dense'``: the paper's way, a (B, heads, N, N) bias.
            - ``'chunked'``: exact, memory linear in N. A FlashAttention-style
              kernel (:mod:`.sape2_kernels`): compiled, in square tiles, for
              float32 on CPU; elsewhere a PyTorch autograd function over blocks
              of at most ``chunk_size`` queries of one (batch, head). Each
              block's bias comes from one matmul per axis (see
              :func:`squared_distance_factors`) and a safe root, and only q, k,
              v, the output, the factors and the per-row logsumexp are kept for
              backward, which recomputes each block. With attention dropout
              (``dropout_p > 0``) it falls back to query blocks of SDPA with the
              bias as mask, each recomputed in backward by activation
              checkpointing (same memory bound, slower).
            - ``'fused'`` (``distance='squared'`` only): q and k are augmented
              with ``[-2 s, |s|^2, 1]`` and ``[s, 1, |s|^2]`` so that plain
              attention (``scale=1``) computes the logits with no N x N tensor.
            - ``'auto'``: ``'chunked'`` where its compiled CPU kernel runs
              (float32 on CPU, no attention dropout), the fastest there at every
              size; otherwise ``'fused'`` for the squared distance, and
              ``'dense'`` when all N tokens fit in one chunk (the bias is then no
              larger than one block's) and ``'chunked'`` beyond.

            Defaults to ``'auto'``.
        chunk_size (int): Most queries per block of ``impl='chunked'`` (the
            block kernel also caps a block at ``BLOCK_ELEMENTS / N`` queries so
            that its buffers stay in cache), and the token count up to which
            ``impl='auto'`` takes ``'dense'``. Defaults to 256.
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.
            Defaults to None.

    Note:
        Numerics. Gates, positions and distances are computed in float32 for
        float16 / bfloat16 inputs (and outside autocast); the attention runs
        in the input dtype, except in the ``'chunked'`` block kernel, which
        attends in float32 and casts the output back. ``'fused'`` casts its extra q/k features,
        ``|s|^2`` included, to that dtype and is the least precise in half
        precision. Distances use a matmul form (one matmul per axis), exact up
        to rounding of order ``eps * |s|^2`` in the squared distance; entries
        below that floor, e.g. a token and itself, are exactly 0 with gradient 0
        (:func:`safe_sqrt`). With TF32 matmuls enabled on GPU this floor is
        much coarser. ``grid.pad_mask`` is not used, as in plain attention.

    Examples:
        >>> import torch
        >>> from mmsape.models.pos_encodings.base import TokenGrid
        >>> from mmsape.models.pos_encodings.sape2 import SaPE2
        >>> sape = SaPE2(embed_dims=64, num_heads=2, num_layers=2, num_positions=10)
        >>> grid = TokenGrid(height=3, width=4, num_prefix=1)
        >>> q, k, v = torch.randn(3, 2, 2, grid.num_tokens, 32)
        >>> sape.attention(0, q, k, v, grid).shape
        torch.Size([2, 2, 13, 32])
        >>> sape.attention_bias(0, q, k, grid).shape
        torch.Size([2, 2, 13, 13])
        >>> sorted(sape.no_weight_decay())
        ['position_tables.layer_0', 'position_tables.layer_1']
        >>> sape.layer_index_of('position_tables.layer_1')
        1
    """

    acts_in_attention = True

    def __init__(self,
                 num_positions: int = 10,
                 embed_with: str = 'query',
                 scale_gates: bool = True,
                 negative_bias: bool = False,
                 layers: Optional[Sequence[int]] = None,
                 position_mode: str = 'clamp',
                 distance: str = 'l2',
                 impl: str = 'auto',
                 chunk_size: int = 256,
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        _check_choice('embed_with', embed_with, EMBED_WITH_CHOICES)
        _check_choice('position_mode', position_mode, POSITION_MODE_CHOICES)
        _check_choice('distance', distance, DISTANCE_CHOICES)
        _check_choice('impl', impl, IMPL_CHOICES)
        if isinstance(num_positions, bool) or not isinstance(num_positions, int) \
                or num_positions < 2:
            raise ValueError(f'num_positions must be an int >= 2 (with fewer, every '
                             f'position reads the same embedding), got {num_positions!r}.')
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}.')
        if impl == 'fused' and distance != 'squared':
            raise ValueError(
                f"impl='fused' computes only the squared distance, but distance="
                f"{distance!r}; set distance='squared' (a different model than the "
                f"paper's) or choose impl='chunked' / 'dense' / 'auto'.")
        self.num_positions = num_positions
        self.embed_with = embed_with
        self.scale_gates = bool(scale_gates)
        self.negative_bias = bool(negative_bias)
        self.layers = layers_from_option(layers, self.num_layers, name='layers')
        self.position_mode = position_mode
        self.distance = distance
        self.impl = impl
        self.chunk_size = chunk_size
        self.position_tables = nn.ParameterDict({
            self._table_key(layer): nn.Parameter(
                torch.empty(2, num_positions + 1, self.head_dims))
            for layer in self.layers
        })
        self.reset_tables()

    # ------------------------------------------------------------------ params
    @staticmethod
    def _table_key(layer_index: int) -> str:
        return f'layer_{layer_index}'

    def reset_tables(self) -> None:
        """Initialise every table with a truncated normal of std 0.02."""
        for table in self.position_tables.values():
            nn.init.trunc_normal_(table, std=0.02)

    def no_weight_decay(self) -> Set[str]:
        return {f'position_tables.{key}' for key in self.position_tables}

    def layer_index_of(self, param_name: str) -> Optional[int]:
        prefix, _, key = param_name.partition('.')
        if prefix != 'position_tables' or not key.startswith('layer_'):
            return None
        index = key[len('layer_'):].partition('.')[0]
        return int(index) if index.isdigit() else None

    def check_compatible(self, *, window_size: int, with_cls_token: bool) -> None:
        """Nothing to check: SaPE² works on any grid, windows included."""

    # --------------------------------------------------------------- forward
    @property
    def _sign(self) -> float:
        return -1. if self.negative_bias else 1.

    def resolve_impl(self, grid: TokenGrid, q: Optional[Tensor] = None,
                     dropout_p: float = 0.) -> str:
        """The implementation ``impl='auto'`` picks for this grid (and for
        queries like ``q``, when given, without attention dropout)."""
        if self.impl != 'auto':
            return self.impl
        if q is not None and dropout_p == 0 and uses_cpu_kernel(
                q.device, _compute_dtype(q.dtype)):
            # Measured on CPU: faster than 'dense' at every size (2x at 196
            # tokens) and than SDPA on augmented q/k ('fused'), whose head
            # dim doubles (1.4x at 1024 tokens).
            return 'chunked'
        if self.distance == 'squared':
            return 'fused'
        return 'dense' if grid.num_tokens <= self.chunk_size else 'chunked'

    def distance_vectors(self, layer_index: int, q: Tensor, k: Tensor,
                         grid: TokenGrid) -> List[Tensor]:
        """Per-axis patch-token vectors whose (squared) distances form the bias.

        The SaPE vectors, divided by ``sqrt(L)`` for ``distance='rms'`` and centred
        over the patch tokens (distances do not change; the cancellation in their
        matmul form shrinks). Computed in float32 for half inputs and outside
        autocast.

        Returns:
            list[Tensor]: ``(B, heads, H*W, W)`` and ``(B, heads, H*W, H)``.
        """
        self._check_layer_and_grid(layer_index, q, grid)
        dtype = _compute_dtype(q.dtype)
        with torch.autocast(device_type=q.device.type, enabled=False):
            tables = self.position_tables[self._table_key(layer_index)].to(dtype)
            gate_scale = self.head_dims**-0.5 if self.scale_gates else 1.
            vectors = sape_vectors(q.to(dtype), k.to(dtype), tables, grid, self.embed_with,
                                   gate_scale, self.position_mode)
            if self.distance == 'rms':
                vectors = tuple(s / math.sqrt(s.shape[-1]) for s in vectors)
            return [s - s.mean(dim=-2, keepdim=True) for s in vectors]

    def distance_factors(self, layer_index: int, q: Tensor, k: Tensor,
                         grid: TokenGrid) -> Tuple[List[Tensor], List[Tensor]]:
        """Per-axis :func:`squared_distance_factors` of all ``P + H*W`` tokens."""
        vectors = self.distance_vectors(layer_index, q, k, grid)
        with torch.autocast(device_type=q.device.type, enabled=False):
            factors = [squared_distance_factors(s, grid.num_prefix) for s in vectors]
        return [f[0] for f in factors], [f[1] for f in factors]

    def attention_bias(self, layer_index: int, q: Tensor, k: Tensor,
                       grid: TokenGrid) -> Tensor:
        """The full ``(B, heads, N, N)`` bias of a SaPE² layer (reference / analysis).

        Zero in the rows and columns of prefix tokens; in the compute dtype
        (float32 for half inputs).
        """
        query_factors, key_factors = self.distance_factors(layer_index, q, k, grid)
        with torch.autocast(device_type=q.device.type, enabled=False):
            return sape_bias(query_factors, key_factors, self.distance, self._sign)

    def attention(self,
                  layer_index: int,
                  q: Tensor,
                  k: Tensor,
                  v: Tensor,
                  grid: TokenGrid,
                  dropout_p: float = 0.) -> Tensor:
        if layer_index not in self.layers:
            return super().attention(layer_index, q, k, v, grid, dropout_p=dropout_p)
        impl = self.resolve_impl(grid, q, dropout_p)
        if impl == 'dense':
            bias = self.attention_bias(layer_index, q, k, grid)
            return attention_with_bias(q, k, v, bias, dropout_p=dropout_p)
        query_factors, key_factors = self.distance_factors(layer_index, q, k, grid)
        if impl == 'chunked':
            return self._chunked_attention(q, k, v, query_factors, key_factors, dropout_p)
        return self._fused_attention(q, k, v, query_factors, key_factors, dropout_p)

    def _check_layer_and_grid(self, layer_index: int, q: Tensor, grid: TokenGrid) -> None:
        if layer_index not in self.layers:
            raise ValueError(f'Layer {layer_index} has no SaPE² table (layers='
                             f'{list(self.layers)}).')
        if q.shape[-2] != grid.num_tokens:
            raise ValueError(f'Got {q.shape[-2]} tokens, but the grid {grid.height}x'
                             f'{grid.width} with {grid.num_prefix} prefix tokens has '
                             f'{grid.num_tokens}.')

    def _chunked_attention(self, q: Tensor, k: Tensor, v: Tensor,
                           query_factors: List[Tensor], key_factors: List[Tensor],
                           dropout_p: float) -> Tensor:
        if dropout_p > 0:
            # The block kernel has no dropout; training with attention dropout
            # takes the checkpointed path (same memory bound, slower).
            return self._checkpointed_attention(q, k, v, query_factors, key_factors,
                                                dropout_p)
        root = self.distance != 'squared'
        if root:
            floors = torch.cat([rounding_floor(f)[..., 0] for f in key_factors], dim=-1)
        else:
            query_factors = [torch.cat(query_factors, dim=-1)]
            key_factors = [torch.cat(key_factors, dim=-1)]
            floors = None
        dtype = query_factors[0].dtype
        with torch.autocast(device_type=q.device.type, enabled=False):
            out = sape2_block_attention(
                q.to(dtype), k.to(dtype), v.to(dtype), query_factors, key_factors, floors,
                root=root, sign=self._sign, block_size=self.chunk_size,
                symmetric=True)
        return out.to(v.dtype)

    def _checkpointed_attention(self, q: Tensor, k: Tensor, v: Tensor,
                                query_factors: List[Tensor], key_factors: List[Tensor],
                                dropout_p: float) -> Tensor:
        attend = partial(_attend_query_block, distance=self.distance, sign=self._sign,
                         dropout_p=dropout_p)
        # Recompute each block's bias in backward instead of keeping it: without
        # this, autograd would hold every block's N-wide bias, i.e. N x N again.
        recompute = torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k, v, *query_factors, *key_factors))
        outputs = []
        for start in range(0, q.shape[-2], self.chunk_size):
            stop = start + self.chunk_size
            block_args = (q[..., start:stop, :], k, v,
                          *(f[..., start:stop, :] for f in query_factors), *key_factors)
            if recompute:
                outputs.append(checkpoint(attend, *block_args, use_reentrant=False))
            else:
                outputs.append(attend(*block_args))
        return torch.cat(outputs, dim=-2)

    def _fused_attention(self, q: Tensor, k: Tensor, v: Tensor,
                         query_factors: List[Tensor], key_factors: List[Tensor],
                         dropout_p: float) -> Tensor:
        q_aug, k_aug = fused_squared_distance_qk(q, k, query_factors, key_factors, self._sign)
        # Fused kernels need v's head dim to equal q's; otherwise PyTorch falls
        # back to the math kernel, which materialises the N x N logits.
        v_padded = F.pad(v, (0, q_aug.shape[-1] - v.shape[-1]))
        out = F.scaled_dot_product_attention(
            q_aug, k_aug, v_padded, dropout_p=dropout_p, scale=1.)
        return out[..., :v.shape[-1]]

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, num_positions={self.num_positions}, '
                f'embed_with={self.embed_with!r}, scale_gates={self.scale_gates}, '
                f'negative_bias={self.negative_bias}, layers={list(self.layers)}, '
                f'position_mode={self.position_mode!r}, distance={self.distance!r}, '
                f'impl={self.impl!r}, chunk_size={self.chunk_size}')


def _attend_query_block(q_block: Tensor, k: Tensor, v: Tensor, *factors: Tensor,
                        distance: str, sign: float, dropout_p: float) -> Tensor:
    """Attention of one block of queries; ``factors`` holds the block's per-axis
    query factors followed by every token's key factors."""
    num_axes = len(factors) // 2
    with torch.autocast(device_type=q_block.device.type, enabled=False):
        bias = sape_bias(factors[:num_axes], factors[num_axes:], distance, sign)
    return F.scaled_dot_product_attention(
        q_block, k, v, attn_mask=bias.to(q_block.dtype), dropout_p=dropout_p)


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


def _check_choice(option: str, value, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{option} must be one of {", ".join(map(repr, choices))}; '
                         f'got {value!r}.')


__all__ = [
    'SaPE2', 'contextual_positions', 'table_positions', 'interpolate_table',
    'axis_sape_vectors', 'sape_vectors', 'squared_distance_factors', 'pairwise_squared_l2',
    'rounding_floor', 'safe_sqrt', 'pairwise_l2', 'sape_bias', 'fused_squared_distance_qk'
]
