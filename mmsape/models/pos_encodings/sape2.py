"""SaPE²: 2D Semantic-Aware Position Encoding (arXiv 2505.09466), the module.

SaPE² is a content-dependent attention-logit bias, the 2D non-causal form of
CoPE. Every choice the paper leaves open follows ``docs/method.md#8-sape-published``
and ``docs/method.md#9-sape-query-relative``. Per layer, head and axis (x
shown; y swaps rows and columns and has its own table):

1. gates inside a row: ``g_ij = sigmoid(q_i . k_j / sqrt(d))``;
2. contextual position of column m seen from token i:

   - published (``count_from='row_end'``): the gated count from m to the row's
     right end, ``p_im = sum_{j in row(i), x_j >= x_m} g_ij``, whatever column i
     sits in (so identical tokens of a row get identical vectors);
   - query-relative (``count_from='query'``, mmsape's extension): the signed
     gated count between the query and m,
     ``r_i(m) = sign(x_m - x_i) * sum_{j in (x_i, x_m]} g_ij``, read through a
     signed table ``e[-(M-1)..M-1]``;

3. read the position through the table by linear interpolation of the scalars
   ``z_i[t] = u_i . e[t]`` (``u = q`` or ``k``; or per-head scalars
   ``z[t] = e_h[t]``), giving the SaPE vector ``s_i = [z_i(p_i1), ..., z_i(p_iW)]``;
4. the bias between two patch tokens, added to ``q.k / sqrt(d)``; class /
   register tokens get zero bias:

   - ``bias='distance'`` (published): ``||s^x_i - s^x_n|| + ||s^y_i - s^y_n||``;
   - ``bias='lookup'`` (CoPE's logit form in 2D): ``s^x_i[x_n] + s^y_i[y_n]``,
     with query-relative positions ``u_i . e_x[r^x_i(x_n)] + u_i . e_y[r^y_i(y_n)]``,
     an axial relative-position bias when the content is uniform.

The equations and kernels are tensor functions in :mod:`mmsape.ops.sape2`; this
module owns the per-layer tables and routes each attention to the path that
:func:`~mmsape.ops.sape2.choose_sape2_kernel` picks (:meth:`SaPE2.choose_kernel`).
Steps 1-3 cost O(N * W) per head and axis. The pairwise distance of step 4 is
the published method's cost: the paper materialises a (B, heads, N, N) bias.
Besides that reference (``impl='dense'``) this module offers exact paths whose
memory is linear in N (``impl='chunked'``, FlashAttention-style kernels over
tiles), plain fused attention on augmented q and k for the biases in matmul
form (``impl='fused'``: the squared distance and the lookup), and
FlexAttention for the lookup (``impl='flex'``). The lookup bias is a gather of
W + H scalars per query and never needs an N x N tensor.
"""
import math
import re
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

from mmsape.ops.sape2 import (
    COUNT_FROM_CHOICES,
    KernelChoice,
    checkpointed_block_attention,
    choose_sape2_kernel,
    flex_lookup_attention,
    fused_squared_distance_qk,
    lookup_bias,
    lookup_block_attention,
    lookup_factors,
    rounding_floor,
    sape2_block_attention,
    sape_bias,
    sape_vectors,
    squared_distance_factors,
)
from mmsape.ops.sape2.dispatch import BIAS_CHOICES, DISTANCE_CHOICES, IMPL_CHOICES
from mmsape.registry import POS_ENCODINGS

from .base import AttentionBiasPositionEncoding, TokenGrid
from .sape2_checkpoint import convert_authors_sape2_tables, is_authors_sape2_state

EMBED_WITH_CHOICES = ('query', 'key')
TABLE_VALUES_CHOICES = ('embeddings', 'head_scalars', 'parabola')
POSITION_MODE_CHOICES = ('clamp', 'relative')


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Distances of half-precision vectors lose too much to cancellation."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@POS_ENCODINGS.register_module()
class SaPE2(AttentionBiasPositionEncoding):
    """2D Semantic-Aware Position Encoding, an attention-logit bias.

    See the module docstring for the equations. Every block in ``layers`` owns
    one parameter ``position_tables.<block>`` of shape ``(2, T, C)`` (row 0: the
    x table, read along rows; row 1: the y table): ``T = M`` rows ``e[0..M-1]``
    as in the authors' code, or ``2M-1`` rows ``e[-(M-1)..M-1]`` for
    ``count_from='query'``; ``C = head_dim`` embeddings shared across heads, or
    ``C = num_heads`` per-head scalars. Checkpoints with the former keys
    ``position_tables.layer_<block>``, and former published-form tables of
    ``M+1`` rows (whose last row was never read), load as they are.

    The defaults are the published SaPE² (``docs/method.md#8-sape-published``); the
    options below ``embed_with`` that say "mmsape's extension" are not in the
    paper.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads; head dim ``d = C // num_heads``.
        num_layers (int): Transformer blocks in the backbone.
        base_grid (tuple[int, int]): Patch grid of the configured image size
            (unused: SaPE² has no per-cell tables). Defaults to (14, 14).
        num_prefix_tokens (int): Class / register tokens. The layout actually
            used is the :class:`TokenGrid` passed to :meth:`attention`.
            Defaults to 1.
        num_positions (int): M, integer positions per axis (per side for
            ``count_from='query'``); the authors' ``npos_max``. Defaults to 10.
        embed_with (str): Which vector reads the table, ``z_i[p] = u_i . e[p]``:
            ``'query'`` (u = q) or ``'key'`` (u = k). The authors' code read it
            with the query in its default model up to March 2025 (the paper's
            appendix code) and with the key in its last commit (May 2025);
            checkpoints trained with that code need the matching value.
            Unused with ``table_values='head_scalars'``. Defaults to ``'query'``.
        count_from (str): How contextual positions are counted (mmsape's
            extension for ``'query'``). ``'row_end'``: from the column to the
            end of the line, as published. ``'query'``: between the query and
            the column, signed by the side; padding cells (``grid.pad_mask``:
            padded batches, padded windows) have gate 0. Defaults to
            ``'row_end'``.
        bias (str): The bias from the SaPE vectors (mmsape's extension for
            ``'lookup'``). ``'distance'``: ``||s_i - s_n||`` per axis, as
            published. ``'lookup'``: ``s^x_i[x_n] + s^y_i[y_n]``, the table read
            at the key's own contextual position (CoPE's logit form in 2D).
            Defaults to ``'distance'``.
        table_values (str): What the tables hold (mmsape's extension for
            ``'head_scalars'``). ``'embeddings'``: vectors ``e[t]`` of head_dim,
            shared by the heads and read as ``u_i . e[t]``, as published.
            ``'head_scalars'``: one scalar per head and position, the logit
            itself (with ``count_from='query'`` and ``bias='lookup'``: a
            contextual relative-position bias). ``'parabola'``: no table, two
            vectors ``w_a, w_b`` of head_dim per axis that read any count ``r``
            as ``-softplus(u_i . w_a) r^2 + (u_i . w_b) r`` (PaPE's form; counts
            are never clamped and ``num_positions`` is unused;
            ``position_mode='relative'`` divides them by the line length;
            docs/method.md, section 9).
            Defaults to ``'embeddings'``.
        table_std (float, optional): Std of the truncated-normal initialisation
            of the tables. None: 0.2 for ``bias='lookup'`` (clearly better than
            0.02 in the earlier digits design sweep), 0.02 otherwise (the
            authors'). Defaults to None.
        scale_gates (bool): Gate logits ``q.k / sqrt(d)`` as in the reference
            code; False uses ``q.k`` as in the paper's equation. Defaults to True.
        gate_temperature (float): Divides the gate logits, ``sigmoid(q.k /
            (sqrt(d) * T))``: above 1 the gates stay nearer 0.5 (counting every
            token alike), below 1 they sharpen. Defaults to 1.
        negative_bias (bool): Subtract the distances instead of adding them
            (ablation; the published sign is +). Only with ``bias='distance'``
            (lookup tables learn their own sign). Defaults to False.
        layers (Sequence[int], optional): Blocks that use SaPE² (negatives count
            from the end); the others attend plainly. None means every block.
            Defaults to None.
        decay_tables (bool): Whether the optimizer's weight decay applies to
            the tables. False declares them in :meth:`no_weight_decay`, like
            absolute position embeddings and relative-position bias tables;
            True decays them as the authors' code does (it excludes only
            ``pos_embed`` and ``cls_token``; the paper configs
            ``configs/vit_cls/vit-s4-*sape2*`` set it). Defaults to False.
        position_mode (str): ``'clamp'``: positions clamped to [0, M-1]
            ([-(M-1), M-1] when signed; the reference; positions saturate in
            rows longer than M). ``'relative'``: positions along an axis are
            first scaled by ``(M-1)/L``, L the row (or column) length, so a full
            line spans the same table range at any resolution. Defaults to
            ``'clamp'``.
        distance (str): With ``bias='distance'``: ``'l2'``, the paper's
            ``||s_i - s_n||_2`` per axis. ``'rms'``: ``||s_i - s_n||_2 / sqrt(L)``,
            which does not grow with the line length L. ``'squared'``:
            ``||s_i - s_n||^2``; a DIFFERENT model (not the paper's), chosen
            because fused attention can compute it exactly (see
            ``impl='fused'``). Defaults to ``'l2'``.
        impl (str): How the bias enters attention; every choice gives the same
            result up to rounding.

            - ``'dense'``: the paper's way, a (B, heads, N, N) bias.
            - ``'chunked'``: exact, memory linear in N. FlashAttention-style
              kernels (:mod:`mmsape.ops.sape2.block_attention`,
              :mod:`mmsape.ops.sape2.lookup_attention`): compiled, in square
              tiles, for float32 on CPU; fused Triton kernels on CUDA GPUs
              where Triton runs; elsewhere a PyTorch function over blocks of
              at most ``chunk_size`` queries of one (batch, head). Only q, k,
              v, the output, the SaPE vectors (or their distance factors) and
              the per-row logsumexp are kept for backward, which recomputes
              each block. With attention dropout
              (``dropout_p > 0``) it falls back to query blocks of SDPA with the
              bias as mask, each recomputed in backward by activation
              checkpointing (same memory bound, slower).
            - ``'fused'`` (``distance='squared'`` or ``bias='lookup'``): q and k
              are augmented with the bias factors (``[-2 s, |s|^2, 1]`` and
              ``[s, 1, |s|^2]``; or ``[s^x, s^y]`` and one-hot columns and rows)
              so that plain attention (``scale=1``) computes the logits with no
              N x N tensor; the head dim grows by ``W + H`` (+ 4).
            - ``'flex'`` (``bias='lookup'``): FlexAttention with a
              ``score_mod`` that gathers the bias; compiled and trainable on
              CUDA, inference only on CPU. With attention dropout it takes the
              ``'chunked'`` dropout path.
            - ``'auto'``: see :meth:`resolve_impl`.

            Which kernel ran is visible: the first time an instance takes a
            path, one log line names it and why, and :meth:`extra_repr` shows
            the last one (:attr:`last_kernel`). Defaults to ``'auto'``.
        chunk_size (int): Most queries per block of ``impl='chunked'`` (the
            block kernel also caps a block at ``BLOCK_ELEMENTS / N`` queries so
            that its buffers stay in cache), and the token count up to which
            ``impl='auto'`` takes ``'dense'`` off the compiled kernel.
            Defaults to 256.
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.
            Defaults to None.

    Note:
        Numerics. Gates, positions, vectors and distances are computed in
        float32 for float16 / bfloat16 inputs (and outside autocast); the
        attention runs in the input dtype, except in the ``'chunked'`` CPU and
        Python kernels, which attend in float32 and cast the output back (the
        Triton kernels take half q, k, v and accumulate in float32). ``'fused'``
        casts its extra q/k features, ``|s|^2`` included, to that dtype and is
        the least precise in half precision. Distances use a matmul form (one matmul per
        axis), exact up to rounding of order ``eps * |s|^2`` in the squared
        distance; entries below that floor, e.g. a token and itself, are
        exactly 0 with gradient 0 (:func:`~mmsape.ops.sape2.safe_sqrt`). With
        TF32 matmuls enabled on GPU this floor is much coarser. Padding:
        ``grid.pad_mask`` zeroes the gates of padding cells with
        ``count_from='query'``; the published form ignores it, as the authors'
        code has no padding. Padded tokens stay keys of the attention, as in
        plain attention.

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
        >>> sape.position_tables['0'].shape  # (axes, M, head_dim)
        torch.Size([2, 10, 32])
        >>> sorted(sape.no_weight_decay())
        ['position_tables.0', 'position_tables.1']
        >>> sape.layer_index_of('position_tables.1')
        1
        >>> relative = SaPE2(embed_dims=64, num_heads=2, num_layers=2, count_from='query',
        ...                  bias='lookup')
        >>> relative.position_tables['0'].shape  # e[-(M-1)..M-1]
        torch.Size([2, 19, 32])
        >>> relative.attention(0, q, k, v, grid).shape
        torch.Size([2, 2, 13, 32])
    """

    per_block_attr = 'position_tables'

    def __init__(self,
                 num_positions: int = 10,
                 embed_with: str = 'query',
                 count_from: str = 'row_end',
                 bias: str = 'distance',
                 table_values: str = 'embeddings',
                 table_std: Optional[float] = None,
                 scale_gates: bool = True,
                 gate_temperature: float = 1.,
                 negative_bias: bool = False,
                 decay_tables: bool = False,
                 position_mode: str = 'clamp',
                 distance: str = 'l2',
                 impl: str = 'auto',
                 chunk_size: int = 256,
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        _check_choice('embed_with', embed_with, EMBED_WITH_CHOICES)
        _check_choice('count_from', count_from, COUNT_FROM_CHOICES)
        _check_choice('bias', bias, BIAS_CHOICES)
        _check_choice('table_values', table_values, TABLE_VALUES_CHOICES)
        _check_choice('position_mode', position_mode, POSITION_MODE_CHOICES)
        _check_choice('distance', distance, DISTANCE_CHOICES)
        _check_choice('impl', impl, IMPL_CHOICES)
        if isinstance(num_positions, bool) or not isinstance(num_positions, int) \
                or num_positions < 2:
            raise ValueError(f'num_positions must be an int >= 2 (with fewer, every '
                             f'position reads the same embedding), got {num_positions!r}.')
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}.')
        if table_std is None:
            table_std = 0.2 if bias == 'lookup' else 0.02
        for option, value in (('gate_temperature', gate_temperature), ('table_std', table_std)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    value > 0 or (option == 'table_std' and value == 0)):
                raise ValueError(f'{option} must be a positive number, got {value!r}.')
        if bias == 'lookup' and (distance != 'l2' or negative_bias):
            raise ValueError(
                "distance and negative_bias shape the distance bias; with bias='lookup' "
                f'leave them at their defaults (got distance={distance!r}, negative_bias='
                f'{negative_bias!r}): the lookup tables learn their own sign and scale.')
        if impl == 'fused' and bias == 'distance' and distance != 'squared':
            raise ValueError(
                f"impl='fused' computes only the squared distance (or the lookup bias), "
                f"but distance={distance!r}; set distance='squared' (a different model "
                f"than the paper's), bias='lookup', or choose impl='chunked' / 'dense' / "
                f"'auto'.")
        if impl == 'flex' and bias != 'lookup':
            raise ValueError("impl='flex' computes only the lookup bias; set bias='lookup' or "
                             "choose impl='chunked' / 'dense' / 'auto'.")
        self.num_positions = num_positions
        self.embed_with = embed_with
        self.count_from = count_from
        self.bias = bias
        self.table_values = table_values
        self.table_std = float(table_std)
        self.scale_gates = bool(scale_gates)
        self.gate_temperature = float(gate_temperature)
        self.negative_bias = bool(negative_bias)
        self.decay_tables = bool(decay_tables)
        self.exclude_from_weight_decay = not self.decay_tables
        self.position_mode = position_mode
        self.distance = distance
        self.impl = impl
        self.chunk_size = chunk_size
        #: The :class:`~mmsape.ops.sape2.KernelChoice` of the last eager
        #: attention (None before the first; not updated while compiling).
        self.last_kernel: Optional[KernelChoice] = None
        self._logged_kernels = set()
        self.position_tables = nn.ParameterDict({
            str(layer): nn.Parameter(torch.empty(2, *self.table_shape)) for layer in self.layers
        })
        self.reset_tables()
        self._register_load_state_dict_pre_hook(self._convert_former_tables)

    # ------------------------------------------------------------------ params
    @property
    def table_shape(self) -> Tuple[int, int]:
        """``(T, C)`` of each axis' table: T rows (M, or 2M-1 signed), C values."""
        if self.table_values == 'parabola':
            return 2, self.head_dims  # w_a, w_b
        rows = 2 * self.num_positions - 1 if self.count_from == 'query' else self.num_positions
        values = self.num_heads if self.table_values == 'head_scalars' else self.head_dims
        return rows, values

    def reset_tables(self) -> None:
        """Initialise every table with a truncated normal of std ``table_std``."""
        for table in self.position_tables.values():
            if self.table_std > 0:
                nn.init.trunc_normal_(table, std=self.table_std)
            else:
                nn.init.zeros_(table)

    def _convert_former_tables(self, state_dict: dict, prefix: str, *args) -> None:
        # Checkpoints saved before the tables followed the per-block convention
        # key them 'position_tables.layer_<block>'.
        former = re.compile(re.escape(prefix) + r'position_tables\.layer_(\d+)$')
        for key in list(state_dict):
            match = former.match(key)
            if match and f'{prefix}position_tables.{match[1]}' not in state_dict:
                state_dict[f'{prefix}position_tables.{match[1]}'] = state_dict.pop(key)
        # Published-form tables used to hold M+1 rows; positions never passed
        # M-1, so the last row was never read (nor trained): drop it.
        if self.count_from == 'row_end':
            rows, values = self.table_shape
            for layer in self.layers:
                key = f'{prefix}position_tables.{layer}'
                table = state_dict.get(key)
                if table is not None and tuple(table.shape) == (2, rows + 1, values):
                    state_dict[key] = table[:, :rows]

    @classmethod
    def foreign_checkpoint_source(cls, state) -> Optional[str]:
        return 'sape2-authors' if is_authors_sape2_state(state) else None

    def convert_checkpoint_keys(self, state: dict, prefix: str) -> List[str]:
        """The tables of a checkpoint trained with the SaPE² authors' code
        (:mod:`.sape2_checkpoint`) become this module's; other keys pass."""
        if not is_authors_sape2_state(state):
            return []
        return convert_authors_sape2_tables(self, state, prefix)

    # --------------------------------------------------------------- forward
    @property
    def _sign(self) -> float:
        return -1. if self.negative_bias else 1.

    def resolve_impl(self, grid: TokenGrid, q: Optional[Tensor] = None,
                     dropout_p: float = 0.) -> str:
        """The implementation ``impl='auto'`` picks for this grid (and for
        queries like ``q``, when given, with attention dropout ``dropout_p``):
        the ``impl`` of :meth:`choose_kernel`'s choice.

        - Lookup bias: the compiled CPU kernel (``'chunked'``) for float32 on
          CPU; FlexAttention (``'flex'``) on CUDA; otherwise, and with
          attention dropout, SDPA on augmented q/k (``'fused'``).
        - Distance bias: a compiled kernel (``'chunked'``) wherever one runs:
          the CPU kernel, or the fused Triton kernels on CUDA (where they
          cannot run, one warning); otherwise ``'fused'`` for the squared
          distance, and ``'dense'`` when all N tokens fit in one chunk (the
          bias is then no larger than one block's) and ``'chunked'`` (the
          Python kernel, or checkpointed SDPA blocks with dropout) beyond.
        """
        return self.choose_kernel(grid, q, dropout_p).impl

    def choose_kernel(self, grid: TokenGrid, q: Optional[Tensor] = None,
                      dropout_p: float = 0., v: Optional[Tensor] = None) -> KernelChoice:
        """The path that computes this encoding's attention for this grid (and
        for queries and values like ``q`` and ``v``, when given, with attention
        dropout ``dropout_p``); see :func:`~mmsape.ops.sape2.choose_sape2_kernel`.
        Without ``q`` it is decided as for a device without compiled kernels."""
        head_dims = self.head_dims if v is None else max(q.shape[-1], v.shape[-1])
        return choose_sape2_kernel(
            bias=self.bias, impl=self.impl, distance=self.distance,
            device=None if q is None else q.device,
            dtype=None if q is None else _compute_dtype(q.dtype), dropout_p=dropout_p,
            num_tokens=grid.num_tokens, chunk_size=self.chunk_size, head_dims=head_dims)

    def layer_vectors(self, layer_index: int, q: Tensor, k: Tensor,
                      grid: TokenGrid) -> Tuple[Tensor, Tensor]:
        """The SaPE vectors of the patch tokens in block ``layer_index``.

        Computed in float32 for half inputs and outside autocast.

        Returns:
            tuple[Tensor, Tensor]: ``(B, heads, H*W, W)`` x vectors and
            ``(B, heads, H*W, H)`` y vectors.
        """
        self._check_layer_and_grid(layer_index, q, grid)
        dtype = _compute_dtype(q.dtype)
        pad_mask = grid.pad_mask if self.count_from == 'query' else None
        if pad_mask is not None and tuple(pad_mask.shape) != (q.shape[0], *grid.hw):
            raise ValueError(f'grid.pad_mask has shape {tuple(pad_mask.shape)}, but the '
                             f'attention has batch {q.shape[0]} on a {grid.height}x'
                             f'{grid.width} grid: it must be (B, H, W).')
        gate_scale = (self.head_dims**-0.5 if self.scale_gates else 1.) / self.gate_temperature
        with torch.autocast(device_type=q.device.type, enabled=False):
            tables = self.position_tables[str(layer_index)].to(dtype)
            embed_with = None if self.table_values == 'head_scalars' else self.embed_with
            reading = 'parabola' if self.table_values == 'parabola' else 'table'
            return sape_vectors(q.to(dtype), k.to(dtype), tables, grid.height, grid.width,
                                grid.num_prefix, embed_with, gate_scale, self.position_mode,
                                self.count_from, pad_mask, reading)

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
        vectors = self.layer_vectors(layer_index, q, k, grid)
        if self.distance == 'rms':
            vectors = tuple(s / math.sqrt(s.shape[-1]) for s in vectors)
        return [s - s.mean(dim=-2, keepdim=True) for s in vectors]

    def distance_factors(self, layer_index: int, q: Tensor, k: Tensor,
                         grid: TokenGrid) -> Tuple[List[Tensor], List[Tensor]]:
        """Per-axis :func:`~mmsape.ops.sape2.squared_distance_factors` of all ``P + H*W`` tokens."""
        vectors = self.distance_vectors(layer_index, q, k, grid)
        with torch.autocast(device_type=q.device.type, enabled=False):
            factors = [squared_distance_factors(s, grid.num_prefix) for s in vectors]
        return [f[0] for f in factors], [f[1] for f in factors]

    def attention_bias(self, layer_index: int, q: Tensor, k: Tensor,
                       grid: TokenGrid, tokens: Optional[Tensor] = None) -> Tensor:
        """The full ``(B, heads, N, N)`` bias of a SaPE² layer (reference / analysis).

        Zero in the rows and columns of prefix tokens; in the compute dtype
        (float32 for half inputs).
        """
        if self.bias == 'lookup':
            x_vectors, y_vectors = self.layer_vectors(layer_index, q, k, grid)
            return lookup_bias(x_vectors, y_vectors, grid.height, grid.width, grid.num_prefix)
        query_factors, key_factors = self.distance_factors(layer_index, q, k, grid)
        with torch.autocast(device_type=q.device.type, enabled=False):
            return sape_bias(query_factors, key_factors, self.distance, self._sign)

    def encoded_attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                          grid: TokenGrid, dropout_p: float = 0.,
                          tokens: Optional[Tensor] = None) -> Tensor:
        choice = self.choose_kernel(grid, q, dropout_p, v)
        self._show_kernel(choice)
        kernel = choice.kernel
        if kernel == 'dense':
            return super().encoded_attention(layer_index, q, k, v, grid, dropout_p=dropout_p)
        if self.bias == 'lookup':
            vectors = self.layer_vectors(layer_index, q, k, grid)
            return self._lookup_attention(kernel, q, k, v, vectors, grid, dropout_p)
        query_factors, key_factors = self.distance_factors(layer_index, q, k, grid)
        if kernel == 'fused_sdpa':
            return self._fused_attention(q, k, v, query_factors, key_factors, dropout_p)
        if kernel == 'checkpointed_sdpa_blocks':
            return checkpointed_block_attention(q, k, v, query_factors, key_factors,
                                                self.distance, self._sign, dropout_p,
                                                self.chunk_size)
        return self._block_attention(kernel, q, k, v, query_factors, key_factors)

    def _show_kernel(self, choice: KernelChoice) -> None:
        """Keep the choice for :meth:`extra_repr` and log each new one once.

        Skipped while ``torch.compile`` traces (a side effect there would break
        the graph): only eager calls record and log their choice.
        """
        if torch.compiler.is_compiling():
            return
        self.last_kernel = choice
        if choice not in self._logged_kernels:
            self._logged_kernels.add(choice)
            print_log(f'SaPE2 attention (impl={self.impl!r} -> {choice.impl!r}) runs {choice}',
                      logger='current')

    def _check_layer_and_grid(self, layer_index: int, q: Tensor, grid: TokenGrid) -> None:
        if layer_index not in self.layers:
            raise ValueError(f'Layer {layer_index} has no SaPE² table (layers='
                             f'{list(self.layers)}).')
        if q.shape[-2] != grid.num_tokens:
            raise ValueError(f'Got {q.shape[-2]} tokens, but the grid {grid.height}x'
                             f'{grid.width} with {grid.num_prefix} prefix tokens has '
                             f'{grid.num_tokens}.')

    def _lookup_attention(self, kernel: str, q: Tensor, k: Tensor, v: Tensor,
                          vectors: Tuple[Tensor, Tensor], grid: TokenGrid,
                          dropout_p: float) -> Tensor:
        layout = (grid.height, grid.width, grid.num_prefix)
        if kernel == 'flex':
            with torch.autocast(device_type=q.device.type, enabled=False):
                out = flex_lookup_attention(q, k, v, *vectors, *layout)
            return out.to(v.dtype)
        if kernel in ('cpu_lookup', 'triton', 'python_blocks'):
            # The kernels attend in the vectors' dtype (float32 for half q, k, v).
            dtype = vectors[0].dtype
            with torch.autocast(device_type=q.device.type, enabled=False):
                out = lookup_block_attention(q.to(dtype), k.to(dtype), v.to(dtype), *vectors,
                                             *layout, kernel=kernel)
            return out.to(v.dtype)
        with torch.autocast(device_type=q.device.type, enabled=False):
            query_factors, key_factors = lookup_factors(*vectors, *layout)
        if kernel == 'fused_sdpa':
            return self._fused_attention(q, k, v, [query_factors], [key_factors], dropout_p)
        # The block kernels have no dropout: the checkpointed path, where the
        # lookup factors' product is their "squared" bias.
        return checkpointed_block_attention(q, k, v, [query_factors], [key_factors],
                                            'squared', 1., dropout_p, self.chunk_size)

    def _block_attention(self, kernel: str, q: Tensor, k: Tensor, v: Tensor,
                         query_factors: List[Tensor], key_factors: List[Tensor]) -> Tensor:
        """The distance bias through an exact block kernel (``cpu_tiles``,
        ``triton`` or ``python_blocks``)."""
        root = self.distance != 'squared'
        if root:
            floors = torch.cat([rounding_floor(f)[..., 0] for f in key_factors], dim=-1)
        else:
            query_factors = [torch.cat(query_factors, dim=-1)]
            key_factors = [torch.cat(key_factors, dim=-1)]
            floors = None
        # The kernels take q, k, v in their dtype and return v's dtype.
        with torch.autocast(device_type=q.device.type, enabled=False):
            return sape2_block_attention(
                q, k, v, query_factors, key_factors, floors, root=root, sign=self._sign,
                block_size=self.chunk_size, symmetric=True, kernel=kernel)

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
                f'embed_with={self.embed_with!r}, count_from={self.count_from!r}, '
                f'bias={self.bias!r}, table_values={self.table_values!r}, '
                f'table_std={self.table_std}, scale_gates={self.scale_gates}, '
                f'gate_temperature={self.gate_temperature}, '
                f'negative_bias={self.negative_bias}, decay_tables={self.decay_tables}, '
                f'layers={list(self.layers)}, '
                f'position_mode={self.position_mode!r}, distance={self.distance!r}, '
                f'impl={self.impl!r}, chunk_size={self.chunk_size}'
                + ('' if self.last_kernel is None else
                   f', last_kernel={self.last_kernel.kernel!r}'))


def _check_choice(option: str, value, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{option} must be one of {", ".join(map(repr, choices))}; '
                         f'got {value!r}.')


__all__ = ['SaPE2']
