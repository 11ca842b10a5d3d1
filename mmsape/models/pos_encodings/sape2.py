"""SaPE²: 2D Semantic-Aware Position Encoding (arXiv 2505.09466), the module.

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

The equations and kernels are tensor functions in :mod:`mmsape.ops.sape2`; this
module owns the per-layer tables and chooses how the bias enters attention.
Steps 1-3 cost O(N * W) per head and axis. The pairwise step 4 is the method's
cost: the paper materialises a (B, heads, N, N) bias. Besides that reference
(``impl='dense'``) this module offers an exact path whose memory is linear in N
(``impl='chunked'``, FlashAttention-style kernels over query blocks,
:mod:`mmsape.ops.sape2.block_attention`) and, for the squared distance, a
variant that plain fused attention computes without any N x N tensor
(``impl='fused'``).
"""
import math
import re
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsape.ops.sape2 import (
    checkpointed_block_attention,
    fused_squared_distance_qk,
    rounding_floor,
    sape2_block_attention,
    sape_bias,
    sape_vectors,
    squared_distance_factors,
    uses_compiled_kernel,
)
from mmsape.registry import POS_ENCODINGS

from .base import AttentionBiasPositionEncoding, TokenGrid

EMBED_WITH_CHOICES = ('query', 'key')
POSITION_MODE_CHOICES = ('clamp', 'relative')
DISTANCE_CHOICES = ('l2', 'rms', 'squared')
IMPL_CHOICES = ('auto', 'dense', 'chunked', 'fused')


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Distances of half-precision vectors lose too much to cancellation."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@POS_ENCODINGS.register_module()
class SaPE2(AttentionBiasPositionEncoding):
    """2D Semantic-Aware Position Encoding, an attention-logit bias.

    See the module docstring for the equations. Every block in ``layers`` owns
    one ``(2, M+1, head_dim)`` parameter ``position_tables.<block>`` (row 0: the
    x table, read along rows; row 1: the y table), shared across heads.
    Checkpoints with the former keys ``position_tables.layer_<block>`` load as
    they are. Note: positions never exceed M-1 (both position modes clamp
    there), so ``e[M]`` exists as the method reference specifies but receives
    no gradient.

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
        decay_tables (bool): Whether the optimizer's weight decay applies to
            the tables. False declares them in :meth:`no_weight_decay`, like
            absolute position embeddings and relative-position bias tables;
            True decays them as the authors' code does (it excludes only
            ``pos_embed`` and ``cls_token``). Defaults to False.
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
              kernel (:mod:`mmsape.ops.sape2.block_attention`): compiled, in
              square tiles, for float32 on CPU; fused Triton kernels on CUDA
              GPUs where Triton runs; elsewhere a PyTorch function over blocks
              of at most ``chunk_size`` queries of one (batch, head). Each
              block's bias comes from one matmul per axis (see
              :func:`~mmsape.ops.sape2.squared_distance_factors`) and a
              safe root, and only q, k, v, the output, the factors and the
              per-row logsumexp are kept for backward, which recomputes each
              block. With attention dropout
              (``dropout_p > 0``) it falls back to query blocks of SDPA with the
              bias as mask, each recomputed in backward by activation
              checkpointing (same memory bound, slower).
            - ``'fused'`` (``distance='squared'`` only): q and k are augmented
              with ``[-2 s, |s|^2, 1]`` and ``[s, 1, |s|^2]`` so that plain
              attention (``scale=1``) computes the logits with no N x N tensor.
            - ``'auto'``: ``'chunked'`` where a compiled kernel runs (float32
              on CPU; CUDA GPUs with Triton) and without attention dropout,
              the fastest there at every size; otherwise ``'fused'`` for the
              squared distance, and ``'dense'`` when all N tokens fit in one
              chunk (the bias is then no larger than one block's) and
              ``'chunked'`` beyond.

            Defaults to ``'auto'``.
        chunk_size (int): Most queries per block of ``impl='chunked'`` (the
            block kernel also caps a block at ``BLOCK_ELEMENTS / N`` queries so
            that its buffers stay in cache), and the token count up to which
            ``impl='auto'`` takes ``'dense'``. Defaults to 256.
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.
            Defaults to None.

    Note:
        Numerics. Gates, positions and distances are computed in float32 for float16 /
        bfloat16 inputs (and outside autocast); the attention runs in the input dtype,
        except in the ``'chunked'`` CPU and Python kernels, which attend in float32 and
        cast the output back (the Triton kernels take half q, k, v and accumulate in
        float32). ``'fused'`` casts its extra q/k features, ``|s|^2`` included, to that
        dtype and is the least precise in half precision. Distances use a matmul form
        (one matmul per axis), exact up to rounding of order ``eps * |s|^2`` in the
        squared distance; entries below that floor, e.g. a token and itself, are exactly
        0 with gradient 0 (:func:`~mmsape.ops.sape2.safe_sqrt`). With TF32 matmuls
        enabled on GPU this floor is much coarser. ``grid.pad_mask`` is not used, as in
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
        >>> sorted(sape.no_weight_decay())
        ['position_tables.0', 'position_tables.1']
        >>> sape.layer_index_of('position_tables.1')
        1
    """

    per_block_attr = 'position_tables'

    def __init__(self,
                 num_positions: int = 10,
                 embed_with: str = 'query',
                 scale_gates: bool = True,
                 negative_bias: bool = False,
                 decay_tables: bool = False,
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
        self.decay_tables = bool(decay_tables)
        self.exclude_from_weight_decay = not self.decay_tables
        self.position_mode = position_mode
        self.distance = distance
        self.impl = impl
        self.chunk_size = chunk_size
        self.position_tables = nn.ParameterDict({
            str(layer): nn.Parameter(torch.empty(2, num_positions + 1, self.head_dims))
            for layer in self.layers
        })
        self.reset_tables()
        self._register_load_state_dict_pre_hook(self._rename_former_table_keys)

    # ------------------------------------------------------------------ params
    def reset_tables(self) -> None:
        """Initialise every table with a truncated normal of std 0.02."""
        for table in self.position_tables.values():
            nn.init.trunc_normal_(table, std=0.02)

    def _rename_former_table_keys(self, state_dict: dict, prefix: str, *args) -> None:
        # Checkpoints saved before the tables followed the per-block convention
        # key them 'position_tables.layer_<block>'.
        former = re.compile(re.escape(prefix) + r'position_tables\.layer_(\d+)$')
        for key in list(state_dict):
            match = former.match(key)
            if match and f'{prefix}position_tables.{match[1]}' not in state_dict:
                state_dict[f'{prefix}position_tables.{match[1]}'] = state_dict.pop(key)

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
        if q is not None and dropout_p == 0 and uses_compiled_kernel(
                q.device, _compute_dtype(q.dtype)):
            # Measured on CPU: faster than 'dense' at every size (2x at 196
            # tokens) and than SDPA on augmented q/k ('fused'), whose head
            # dim doubles (1.4x at 1024 tokens). On CUDA: the fused Triton
            # kernels (where they cannot run, uses_compiled_kernel warns once).
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
            tables = self.position_tables[str(layer_index)].to(dtype)
            gate_scale = self.head_dims**-0.5 if self.scale_gates else 1.
            vectors = sape_vectors(q.to(dtype), k.to(dtype), tables, grid.height, grid.width,
                                   grid.num_prefix, self.embed_with, gate_scale,
                                   self.position_mode)
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
                       grid: TokenGrid) -> Tensor:
        """The full ``(B, heads, N, N)`` bias of a SaPE² layer (reference / analysis).

        Zero in the rows and columns of prefix tokens; in the compute dtype
        (float32 for half inputs).
        """
        query_factors, key_factors = self.distance_factors(layer_index, q, k, grid)
        with torch.autocast(device_type=q.device.type, enabled=False):
            return sape_bias(query_factors, key_factors, self.distance, self._sign)

    def encoded_attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                          grid: TokenGrid, dropout_p: float = 0.) -> Tensor:
        impl = self.resolve_impl(grid, q, dropout_p)
        if impl == 'dense':
            return super().encoded_attention(layer_index, q, k, v, grid, dropout_p=dropout_p)
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
            # The block kernels have no dropout; training with attention dropout
            # takes the checkpointed path (same memory bound, slower).
            return checkpointed_block_attention(q, k, v, query_factors, key_factors,
                                                self.distance, self._sign, dropout_p,
                                                self.chunk_size)
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
                block_size=self.chunk_size, symmetric=True)

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
                f'negative_bias={self.negative_bias}, decay_tables={self.decay_tables}, '
                f'layers={list(self.layers)}, '
                f'position_mode={self.position_mode!r}, distance={self.distance!r}, '
                f'impl={self.impl!r}, chunk_size={self.chunk_size}')


def _check_choice(option: str, value, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{option} must be one of {", ".join(map(repr, choices))}; '
                         f'got {value!r}.')


__all__ = ['SaPE2']
