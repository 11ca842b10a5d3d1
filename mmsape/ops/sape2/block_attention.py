"""Memory-lean exact SaPE² attention: FlashAttention-style kernels over query blocks.

Computes, for every batch element and head,

    out = softmax(q k^T / sqrt(d) + sign * bias) v,
    bias_in = sum over axes a of D_a(i, n),

where each axis contributes the matmul-form squared distance
``sq_a = query_factors_a @ key_factors_a^T`` (see
:func:`~.functional.squared_distance_factors`), either as is (``root=False``,
the squared-distance model) or through the safe square root of
:func:`~.functional.safe_sqrt` (``root=True``): ``D = sqrt(sq)`` where
``sq > floor`` and ``D = 0`` with zero gradient at or below the rounding floor.

:func:`sape2_block_attention` is the one entry point; the kernel it runs is
:func:`~.dispatch.choose_sape2_kernel`'s (``impl='chunked'``) unless forced.
The kernels give the same results up to float rounding:

* ``cpu_tiles``: the compiled CPU kernel of :mod:`.sape2_attention_cpu`, for
  float32 CPU tensors with symmetric factors (tiled, each pair of distance
  tiles computed once);
* ``triton``: the fused Triton kernels of :mod:`.sape2_attention_triton`, on
  CUDA GPUs (compute capability >= 8.0) where Triton is installed;
* ``python_blocks``: the Python kernel (:func:`sape2_attention_python_forward`
  and its backward), pure PyTorch over query blocks: every other device and
  dtype (float64, CUDA without Triton, ...).

Each kernel is a pair of PyTorch custom operators with fake implementations
and one autograd formula (:mod:`.attention_autograd`), so that
``torch.compile`` traces a SaPE² model without graph breaks and
``torch.export`` records one op per attention.

Memory. All keep only q, k, v, the output, the factors and the per-row
logsumexp for backward, i.e. O(N * (d + W + H)) per head, and recompute the
probabilities of each block in backward. The Python kernel walks over blocks
of ``block_size`` queries of one (batch, head) at a time on a handful of
``block_size x N`` buffers, allocated once per call. None has attention
dropout: :func:`checkpointed_block_attention` serves that case with the same
memory bound.

Speed of the Python kernel. On CPU the per-element work between the matmuls
dominates once the matmuls are done per (batch, head) and block (so that the
buffers stay in the core's cache), and the choice of element-wise ops matters
a lot there: ``where`` and ``masked_fill`` (scalar kernels whose branches
mispredict) and ``sqrt`` of exact zeros each cost 10-30 times an ``add``, while
``threshold`` costs as much as an ``add``. The floor test is therefore done
with ``threshold`` and a scalar per (batch, head), and the entries at or below
the floor are parked at a positive *marker* (a quarter of the floor) for the
root, then set to exactly 0 by a second ``threshold``; see
:func:`_distance_block`. The results are those of
``where(sq > floor, sq, 0).sqrt()`` exactly.
"""
import math
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .attention_autograd import fake_attention_outputs, heads_first, register_attention_autograd
from .dispatch import choose_sape2_kernel
from .functional import sape_bias
from .sape2_attention_cpu import sape2_attention_cpu
from .sape2_attention_triton import Q_DTYPES as TRITON_Q_DTYPES
from .sape2_attention_triton import sape2_attention_triton

#: Largest block buffer, in elements (1 MiB in float32). The few ``rows x N``
#: buffers of a block are then about as large as a core's L2 cache, and the
#: element-wise passes over them and the GEMMs writing them run from cache;
#: measured on CPU, larger blocks at N = 4096 make the whole kernel ~2x slower.
BLOCK_ELEMENTS = 2**18


def _distance_block(squared: Tensor, floor: float, inverse: Optional[Tensor] = None) -> None:
    """In place: squared distances -> safe roots; optionally ``-1 / root`` (0 at 0).

    Turns ``squared`` into ``where(squared > floor, squared, 0).sqrt()`` and, when
    ``inverse`` (a buffer of the same shape) is given, fills it with ``-1 / root``
    where the root is positive and 0 elsewhere: the factor of the gradient
    ``d root / d squared = 0.5 / root`` up to a constant, with the subgradient 0
    of a norm at 0 (``safe_sqrt``'s semantics). The negative sign is what lets
    ``threshold`` (which replaces values *at or below* a threshold) pick out the
    zero-distance entries, whose inverse is the largest.

    Args:
        squared (Tensor): ``(rows, N)`` squared distances; overwritten.
        floor (float): Rounding floor of this (batch, head), >= 0.
        inverse (Tensor, optional): ``(rows, N)`` buffer for ``-1 / root``.
    """
    if floor < 4 * torch.finfo(squared.dtype).tiny:
        # No usable marker below the floor (degenerate, e.g. all vectors 0):
        # the plain, slower form.
        F.threshold_(squared, floor, 0.)
        squared.sqrt_()
        if inverse is not None:
            zero = torch.zeros((), dtype=squared.dtype, device=squared.device)
            torch.where(squared > 0, -1 / squared, zero, out=inverse)
        return
    # Entries at or below the floor become the marker floor / 4: every value is
    # then positive, which keeps the root on its fast path. With r = sqrt(floor),
    # kept roots are >= r (up to an ulp) and marker roots are r / 2, so a
    # threshold at 0.75 r (and at -1.5 / r for -1 / root) separates them cleanly.
    marker = floor / 4
    root_floor = math.sqrt(floor)
    F.threshold_(squared, floor, marker)
    squared.sqrt_()
    if inverse is not None:
        torch.reciprocal(squared, out=inverse).neg_()
        F.threshold_(inverse, -1.5 / root_floor, 0.)
    F.threshold_(squared, 0.75 * root_floor, 0.)


class _BlockLogits:
    """Buffers and per-(batch, head) state to build the logits of query blocks.

    ``logits = scale * q_block k^T + sign * sum_a D_a`` is written into a
    reusable ``(rows, N)`` buffer; in backward, the per-axis ``-1 / root``
    factors of the gradient are kept in buffers of their own. The buffers are
    allocated once per call and reused for every (batch, head) and block.
    """

    def __init__(self, like: Tensor, rows: int, num_axes: int, root: bool, sign: float,
                 with_inverse: bool) -> None:
        num_keys, head_dims = like.shape[-2:]
        rows = min(rows, num_keys)

        def new() -> Tensor:
            return like.new_empty(rows, num_keys)

        # One distance buffer per axis; the logits of a single axis live in its
        # distance buffer.
        self.distances = [new() for _ in range(num_axes)]
        self.logits = new() if num_axes > 1 else None
        self.inverses = [new() for _ in range(num_axes)] if (root and with_inverse) else None
        self.root = root
        self.sign = sign
        self.scale = head_dims**-0.5
        self.keys_t: Optional[Tensor] = None
        self.key_factors_t: List[Tensor] = []
        self.floors: Sequence[float] = ()

    def set_head(self, keys: Tensor, key_factors: Sequence[Tensor],
                 floors: Sequence[float]) -> None:
        """Switch to the keys of another (batch, head)."""
        self.keys_t = keys.t()
        self.key_factors_t = [f.t() for f in key_factors]
        self.floors = floors

    def __call__(self, queries: Tensor, query_factors: Sequence[Tensor]) -> Tensor:
        rows = queries.shape[0]
        distances = [d[:rows] for d in self.distances]
        for axis, (query_factor, key_factor_t) in enumerate(
                zip(query_factors, self.key_factors_t)):
            torch.mm(query_factor, key_factor_t, out=distances[axis])
            if self.root:
                inverse = self.inverses[axis][:rows] if self.inverses is not None else None
                _distance_block(distances[axis], self.floors[axis], inverse)
        if self.logits is None:
            logits = distances[0]
        else:
            logits = torch.add(distances[0], distances[1], out=self.logits[:rows])
            for distance in distances[2:]:
                logits.add_(distance)
        # The sign of the bias and the q.k term in one GEMM with beta = sign.
        return logits.addmm_(queries, self.keys_t, beta=self.sign, alpha=self.scale)

    def inverse(self, axis: int, rows: int) -> Tensor:
        """The ``-1 / root`` factors (0 at zero distance) of the last block."""
        return self.inverses[axis][:rows]


@torch.library.custom_op('mmsape::sape2_attention_python', mutates_args=())
def sape2_attention_python_forward(q: Tensor, k: Tensor, v: Tensor, query_factors: List[Tensor],
                                   key_factors: List[Tensor], floors: Optional[Tensor],
                                   root: bool, sign: float,
                                   block_size: int) -> Tuple[Tensor, Tensor]:
    """The Python kernel's forward: ``(out, lse)``, ``lse`` the ``(..., N)`` row
    log-sum-exp of the logits. See :func:`sape2_block_attention`."""
    num_axes = len(query_factors)
    num_tokens = q.shape[-2]
    q3, k3, v3 = (heads_first(t) for t in (q, k, v))
    qf3, kf3 = [heads_first(f) for f in query_factors], [heads_first(f) for f in key_factors]
    out = torch.empty_like(v3)
    lse = q3.new_empty(q3.shape[:-1])
    block_logits = _BlockLogits(k3, block_size, num_axes, root, sign, with_inverse=False)
    for head, floor_values in enumerate(_floor_values(floors, q3.shape[0], num_axes)):
        block_logits.set_head(k3[head], [f[head] for f in kf3], floor_values)
        for start in range(0, num_tokens, block_size):
            rows = slice(start, start + block_size)
            logits = block_logits(q3[head, rows], [f[head, rows] for f in qf3])
            row_max = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(row_max).exp_()  # unnormalised
            row_sum = probs.sum(dim=1, keepdim=True)
            # Normalise the (rows, d) output rather than the (rows, N) weights.
            torch.mm(probs, v3[head], out=out[head, rows]).div_(row_sum)
            torch.add(row_max, row_sum.log_(), out=lse[head, rows, None])
    return out.view(v.shape), lse.view(q.shape[:-1])


@sape2_attention_python_forward.register_fake
def _(q, k, v, query_factors, key_factors, floors, root, sign, block_size):
    return fake_attention_outputs(q, v)


@torch.library.custom_op('mmsape::sape2_attention_python_backward', mutates_args=())
def sape2_attention_python_backward(
        grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
        query_factors: List[Tensor], key_factors: List[Tensor], floors: Optional[Tensor],
        root: bool, sign: float,
        block_size: int) -> Tuple[Tensor, Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The Python kernel's backward: gradients of q, k, v and of every factor."""
    num_axes = len(query_factors)
    factor_shapes = [f.shape for f in (*query_factors, *key_factors)]
    q3, k3, v3, out3, grad_out3 = (heads_first(t) for t in (q, k, v, out, grad_out))
    qf3, kf3 = [heads_first(f) for f in query_factors], [heads_first(f) for f in key_factors]
    lse2 = lse.reshape(q3.shape[:-1])
    num_heads, num_tokens, head_dims = q3.shape
    # delta_i = sum_n P_in dP_in = dO_i . O_i, the softmax backward's row term.
    delta = (grad_out3 * out3).sum(-1, keepdim=True)
    # Query-side gradients are written block by block, key-side ones summed.
    grad_q = torch.empty_like(q3)
    grad_k, grad_v = torch.zeros_like(k3), torch.zeros_like(v3)
    grad_qf = [torch.empty_like(f) for f in qf3]
    grad_kf = [torch.zeros_like(f) for f in kf3]
    grad_probs = q3.new_empty(min(block_size, num_tokens), num_tokens)
    block_logits = _BlockLogits(k3, block_size, num_axes, root, sign, with_inverse=True)
    for head, floor_values in enumerate(_floor_values(floors, num_heads, num_axes)):
        block_logits.set_head(k3[head], [f[head] for f in kf3], floor_values)
        for start in range(0, num_tokens, block_size):
            rows = slice(start, start + block_size)
            queries = q3[head, rows]
            query_factors = [f[head, rows] for f in qf3]
            logits = block_logits(queries, query_factors)
            probs = logits.sub_(lse2[head, rows, None]).exp_()
            block_grad_out = grad_out3[head, rows]
            grad_v[head].addmm_(probs.t(), block_grad_out)
            # dS = P * (dP - delta), in the dP buffer.
            grad_logits = torch.mm(block_grad_out, v3[head].t(),
                                   out=grad_probs[:probs.shape[0]])
            grad_logits.sub_(delta[head, rows]).mul_(probs)
            torch.mm(grad_logits, k3[head], out=grad_q[head, rows])
            grad_k[head].addmm_(grad_logits.t(), queries)
            for axis in range(num_axes):
                if root:
                    # d bias / d sq = 0.5 / D: the chain factor is -1/D held
                    # in the inverse buffer; -0.5 * sign is applied at the end.
                    grad_squared = block_logits.inverse(axis, probs.shape[0])
                    grad_squared.mul_(grad_logits)
                else:
                    grad_squared = grad_logits
                torch.mm(grad_squared, kf3[axis][head], out=grad_qf[axis][head, rows])
                grad_kf[axis][head].addmm_(grad_squared.t(), query_factors[axis])
    scale = head_dims**-0.5
    grad_q.mul_(scale)
    grad_k.mul_(scale)
    factor_scale = -0.5 * sign if root else sign
    if factor_scale != 1:
        for grad in (*grad_qf, *grad_kf):
            grad.mul_(factor_scale)
    return (grad_q.view(q.shape), grad_k.view(k.shape), grad_v.view(v.shape),
            [g.view(shape) for g, shape in zip(grad_qf, factor_shapes[:num_axes])],
            [g.view(shape) for g, shape in zip(grad_kf, factor_shapes[num_axes:])])


@sape2_attention_python_backward.register_fake
def _(grad_out, q, k, v, out, lse, query_factors, key_factors, floors, root, sign, block_size):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            [f.new_empty(f.shape) for f in query_factors],
            [f.new_empty(f.shape) for f in key_factors])


register_attention_autograd(sape2_attention_python_forward, sape2_attention_python_backward,
                            num_tensor_args=6)


def _floor_values(floors: Optional[Tensor], num_heads: int, num_axes: int) -> List[List[float]]:
    """Per (batch, head) and axis floors as Python floats (scalars for ``threshold``)."""
    if floors is None:
        return [[0.] * num_axes for _ in range(num_heads)]
    return floors.detach().reshape(num_heads, num_axes).tolist()


#: The kernels of :func:`sape2_block_attention`, by their paths of
#: :data:`~.dispatch.KERNEL_PATHS`: the compiled CPU kernel, the fused Triton
#: kernels, the Python kernel.
BLOCK_KERNELS = ('cpu_tiles', 'triton', 'python_blocks')
#: The same kernels' short names, which ``kernel=`` takes as well.
KERNELS = ('cpu', 'triton', 'python')
_KERNEL_PATHS = dict(zip(KERNELS, BLOCK_KERNELS))


def sape2_block_attention(q: Tensor, k: Tensor, v: Tensor, query_factors: Sequence[Tensor],
                          key_factors: Sequence[Tensor], floors: Optional[Tensor], root: bool,
                          sign: float = 1., block_size: int = 128, symmetric: bool = False,
                          kernel: Optional[str] = None) -> Tensor:
    """``softmax(q k^T / sqrt(d) + sign * bias) v`` with the SaPE² bias, exactly,
    in tiles or query blocks, without any N x N tensor saved for backward.

    The kernel is :func:`~.dispatch.choose_sape2_kernel`'s for the device,
    the factors' dtype, the head dims and ``symmetric``: float32 factors on a
    CUDA GPU where Triton runs go through the fused Triton kernels
    (``'triton'``: :func:`~.sape2_attention_triton.sape2_attention_triton`, q,
    k and v in their own dtype, float32, float16 or bfloat16); float32 CPU
    inputs with ``symmetric=True`` through the compiled CPU kernel where it is
    built (``'cpu_tiles'``: :func:`~.sape2_attention_cpu.load_cpu_kernel`);
    everything else through the Python kernel (``'python_blocks'``:
    :func:`sape2_attention_python_forward`). All are custom operators
    (:mod:`.attention_autograd`): ``torch.compile`` traces this function
    without a graph break.

    Args:
        q (Tensor): ``(..., N, d)`` queries.
        k (Tensor): ``(..., N, d)`` keys.
        v (Tensor): ``(..., N, dv)`` values.
        query_factors (Sequence[Tensor]): Per axis, ``(..., N, L_a + 2)`` query
            factors of the squared distance (all-zero rows for prefix tokens).
        key_factors (Sequence[Tensor]): Per axis, ``(..., N, L_a + 2)`` key factors.
        floors (Tensor, optional): ``(..., num_axes)`` rounding floors of the
            squared distances (:func:`~.functional.rounding_floor`);
            only used with ``root=True``.
        root (bool): True: the bias sums the per-axis distances ``sqrt(sq)``
            (0 at or below the floor); False: it sums the squared distances
            (pass the concatenated factors as one axis).
        sign (float): +1 or -1, the sign of the bias. Defaults to 1.
        block_size (int): Python kernel only: most queries per block; fewer
            when ``block_size x N`` exceeds :data:`BLOCK_ELEMENTS` (but at least
            16). The compiled kernels have fixed or autotuned tiles.
            Defaults to 128.
        symmetric (bool): The factors of every axis are those that
            :func:`~.functional.squared_distance_factors` makes of one set of
            vectors, so ``qf_i . kf_n = qf_n . kf_i``: the compiled CPU kernel
            then computes the distances of each pair of tiles once, for both
            orientations. Defaults to False.
        kernel (str, optional): Forces a kernel (for benchmarks, tests and
            callers that have asked the dispatcher already): a path of
            :data:`BLOCK_KERNELS` or its short name of :data:`KERNELS`; None
            asks :func:`~.dispatch.choose_sape2_kernel`. Defaults to None.

    Returns:
        Tensor: ``(..., N, dv)`` in v's dtype. The CPU and Python kernels
        attend in the factors' dtype (q, k and v are cast to it; float32
        factors for half q, k, v); all tensors on one device.
    """
    if root and floors is None:
        raise ValueError('root=True needs the rounding floors of the squared distances.')
    if len(query_factors) != len(key_factors) or not query_factors:
        raise ValueError('Need one query and one key factor per axis.')
    if kernel is not None and kernel not in KERNELS + BLOCK_KERNELS:
        raise ValueError(f'kernel must be one of {KERNELS} (or their paths {BLOCK_KERNELS}) '
                         f'or None, got {kernel!r}.')
    query_factors = [f.contiguous() for f in query_factors]
    key_factors = [f.contiguous() for f in key_factors]
    dtype = query_factors[0].dtype
    if kernel is None:
        kernel = choose_sape2_kernel(
            bias='distance', impl='chunked', distance='l2' if root else 'squared',
            device=q.device, dtype=dtype, head_dims=max(q.shape[-1], v.shape[-1]),
            num_axes=len(query_factors), symmetric=symmetric).kernel
    kernel = _KERNEL_PATHS.get(kernel, kernel)
    floors = floors if root else None
    out_dtype = v.dtype
    if kernel == 'triton':
        if q.dtype not in TRITON_Q_DTYPES:
            q, k, v = (t.to(dtype) for t in (q, k, v))
        out = sape2_attention_triton(q, k, v, query_factors, key_factors, floors, root, sign)
        return out.to(out_dtype)
    q, k, v = (t.to(dtype).contiguous() for t in (q, k, v))
    if kernel == 'cpu_tiles':
        out = sape2_attention_cpu(q, k, v, query_factors, key_factors, floors, root, sign)
    else:
        num_tokens = q.shape[-2]
        block_size = max(1, min(int(block_size), max(16, BLOCK_ELEMENTS // num_tokens)))
        out, _ = sape2_attention_python_forward(q, k, v, query_factors, key_factors, floors,
                                                bool(root), float(sign), block_size)
    return out.to(out_dtype)


def checkpointed_block_attention(q: Tensor, k: Tensor, v: Tensor,
                                 query_factors: Sequence[Tensor], key_factors: Sequence[Tensor],
                                 distance: str, sign: float = 1., dropout_p: float = 0.,
                                 block_size: int = 128) -> Tensor:
    """The attention of :func:`sape2_block_attention`, with attention dropout.

    Blocks of ``block_size`` queries attend by ``scaled_dot_product_attention``
    with their ``(block, N)`` bias (:func:`~.functional.sape_bias`) as the mask;
    each block is recomputed in backward (activation checkpointing), so the
    memory bound is that of the block kernels, at a higher cost.

    Args:
        q (Tensor): ``(..., N, d)`` queries.
        k (Tensor): ``(..., N, d)`` keys.
        v (Tensor): ``(..., N, dv)`` values.
        query_factors (Sequence[Tensor]): Per axis, ``(..., N, L_a + 2)``.
        key_factors (Sequence[Tensor]): Per axis, ``(..., N, L_a + 2)``.
        distance (str): See :func:`~.functional.sape_bias`.
        sign (float): +1 or -1, the sign of the bias. Defaults to 1.
        dropout_p (float): Attention dropout. Defaults to 0.
        block_size (int): Queries per block. Defaults to 128.

    Returns:
        Tensor: ``(..., N, dv)``.
    """
    attend = partial(_attend_query_block, distance=distance, sign=sign, dropout_p=dropout_p)
    # Recompute each block's bias in backward instead of keeping it: without
    # this, autograd would hold every block's N-wide bias, i.e. N x N again.
    recompute = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, *query_factors, *key_factors))
    outputs = []
    for start in range(0, q.shape[-2], block_size):
        stop = start + block_size
        block_args = (q[..., start:stop, :], k, v,
                      *(f[..., start:stop, :] for f in query_factors), *key_factors)
        if recompute:
            outputs.append(checkpoint(attend, *block_args, use_reentrant=False))
        else:
            outputs.append(attend(*block_args))
    return torch.cat(outputs, dim=-2)


def _attend_query_block(q_block: Tensor, k: Tensor, v: Tensor, *factors: Tensor,
                        distance: str, sign: float, dropout_p: float) -> Tensor:
    """Attention of one block of queries; ``factors`` holds the block's per-axis
    query factors followed by every token's key factors."""
    num_axes = len(factors) // 2
    with torch.autocast(device_type=q_block.device.type, enabled=False):
        bias = sape_bias(factors[:num_axes], factors[num_axes:], distance, sign)
    return F.scaled_dot_product_attention(
        q_block, k, v, attn_mask=bias.to(q_block.dtype), dropout_p=dropout_p)


__all__ = [
    'BLOCK_ELEMENTS', 'BLOCK_KERNELS', 'KERNELS', 'checkpointed_block_attention',
    'sape2_attention_python_backward', 'sape2_attention_python_forward', 'sape2_block_attention'
]
