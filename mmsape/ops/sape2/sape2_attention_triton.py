"""Exact SaPE² attention by fused Triton kernels, forward and backward.

Computes, for every batch element and head, exactly what
``sape2_block_attention`` computes (same arguments, same floors, same
zero-gradient semantics of the safe root)::

    out = softmax(q k^T / sqrt(d) + sign * sum_a D_a) v,
    D_a = root ? saferoot(qf_a kf_a^T, floor_a) : qf_a kf_a^T,

in the FlashAttention-2 structure (kernels in :mod:`.sape2_triton_kernels`):

* forward: one program per (query tile, batch * head) walks over the key
  tiles with an online softmax; per tile one tensor-core product ``q k^T``,
  per axis one float32 IEEE product of the factors (in chunks of the factor
  width) and the safe root, then ``P v``. Saved for backward: the inputs, the
  float32 output and the row log-sum-exp, i.e. O(N) per head, never an N x N
  tensor;
* backward: two kernels recompute each tile from the lse. One program per
  key tile accumulates ``dk`` and ``dv`` in registers and adds each tile's
  share of the key factors' gradients to their rows in place (float32, in
  chunks of the width: registers stay bounded for any width); one program per
  query tile does the same for ``dq`` and the query factors. The row term
  ``delta = rowsum(dO * O)`` comes from one PyTorch reduction. No atomics:
  every output row belongs to one program.

Cost per pair of tokens, with ``W`` the summed factor widths (132 for a
64 x 64 grid) and ``d`` the head dim: ``20 d`` tensor-core FLOPs (forward
``6 d``, with ``P v`` twice for half inputs, see
:func:`sape2_attention_triton_forward`; backward ``14 d``, the
FlashAttention-2 tutorial's split, which recomputes ``q k^T`` and ``dO v^T``
once more than flash attention's ``10 d``) and ``10 W`` float32 FLOPs on CUDA
cores (the distances once forward and twice backward, the two factor
gradients). Plain flash attention needs ``14 d`` tensor-core FLOPs.
CUDA cores do about 15x fewer FLOPs per second than bfloat16 tensor cores on
Hopper, so the float32 part dominates; it cannot move to tensor cores, whose
TF32 mantissa leaves the matmul form's rounding far above the floor (see the
kernels' docstring).

The kernels are registered as the PyTorch operators
``mmsape::sape2_attention_triton`` (forward: output and lse) and
``mmsape::sape2_attention_triton_backward``, with fake implementations and
autograd, so that ``torch.compile`` traces them as single nodes without graph
breaks and ``torch.export`` records one op.

Devices. CUDA tensors (compute capability >= 8.0) run the compiled kernels,
autotuned over a few tile configurations per problem size class. CPU tensors
run the same kernels through Triton's interpreter (exact, slow; for tests),
which is a per-process choice: Triton reads ``TRITON_INTERPRET=1`` when it
decorates each ``@triton.jit`` function, its own library's included (at
``import triton``), and interpreted and compiled functions cannot call each
other. So the interpreter runs only in processes that set the variable before
importing Triton (then for CUDA tensors too); the kernels here are decorated
in whatever mode Triton's library was.
"""
import functools
import importlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .attention_autograd import heads_first

#: Smallest CUDA compute capability the kernels are built for (Ampere).
MIN_CUDA_CAPABILITY = (8, 0)
#: Largest head dim (of q/k and of v): wider heads would not fit in registers.
MAX_HEAD_DIMS = 256
Q_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_KERNELS_MODULE = __name__.rpartition('.')[0] + '.sape2_triton_kernels'

#: Tiles under the interpreter: small, so that tests cover several tiles and
#: the tail masks with few tokens.
_INTERPRETER_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_F=16)
#: CUDA autotuning candidates: (BLOCK_M, BLOCK_N, BLOCK_F, num_warps, num_stages).
#: Chosen by compiling for sm_90 with ptxas (no GPU at hand): for bfloat16
#: inputs at head dims 32, 64 and 128, and for float16 and float32 at 64, every
#: kernel has candidates that spill no registers; software pipelining
#: (num_stages > 1) and larger tiles spilled. The backward kernels walk over thin tiles (16
#: tokens): Triton's float32 products keep ``16 x`` (rows + columns) operand
#: values per thread.
_FORWARD_CONFIGS = ((64, 64, 16, 8, 1), (128, 32, 16, 8, 1), (64, 32, 16, 4, 1),
                    (64, 32, 16, 8, 1))
_BACKWARD_QUERY_CONFIGS = ((64, 16, 16, 8, 1), (32, 16, 16, 4, 1), (64, 32, 16, 8, 1))
_BACKWARD_KEY_CONFIGS = ((16, 64, 16, 8, 1), (16, 32, 16, 8, 1), (16, 32, 16, 4, 1),
                         (32, 64, 16, 8, 1))
_AUTOTUNE_KEY = ['tokens_bucket', 'head_dims', 'value_dims', 'width0', 'width1', 'NUM_AXES',
                 'ROOT']


_CPU_NEEDS_INTERPRETER = (
    'on the CPU the kernels run only through Triton\'s interpreter, which a process turns on '
    'by setting TRITON_INTERPRET=1 before it imports Triton (exact but slow, for testing)')


# --------------------------------------------------------------- availability
@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as error:  # ImportError, or a broken install's OSError
        return f'{type(error).__name__}: {error}'
    return None


def _interpreter_active() -> bool:
    """Whether Triton was imported with its interpreter on (``TRITON_INTERPRET=1``)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(tl.standard.zeros, InterpretedFunction)


def triton_unavailable_reason(device) -> Optional[str]:
    """Why :func:`sape2_attention_triton` cannot run on ``device`` (None if it can).

    It runs on CUDA devices of compute capability >= 8.0 and, through Triton's
    interpreter, on the CPU in processes that set ``TRITON_INTERPRET=1`` before
    importing Triton (exact but slow: for testing). Meant for dispatchers that
    warn once and fall back.
    """
    device = torch.device(device)
    import_error = _triton_import_error()
    if import_error is not None:
        return f'Triton cannot be imported ({import_error}); install it (pip install triton)'
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            return 'CUDA is not available'
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CUDA_CAPABILITY:
            return (f'the GPU has compute capability {capability[0]}.{capability[1]}; the '
                    f'kernels need >= {MIN_CUDA_CAPABILITY[0]}.{MIN_CUDA_CAPABILITY[1]}')
        return None
    if device.type == 'cpu':
        if _interpreter_active():
            return None
        return _CPU_NEEDS_INTERPRETER
    return f'the kernels run on CUDA devices, not on {device.type!r}'


def triton_available(device) -> bool:
    """Whether :func:`sape2_attention_triton` runs on ``device``; see
    :func:`triton_unavailable_reason`."""
    return triton_unavailable_reason(device) is None


# -------------------------------------------------------------------- kernels
class _Launchers:
    """The three kernels, autotuned, or with :data:`_INTERPRETER_CONFIG` when
    interpreted (Triton's default benchmarker needs a GPU).

    Args:
        module: The kernel module.
        interpreted (bool): Whether its kernels are interpreted.
        do_bench (callable, optional): Autotune even so, timing with this
            benchmarker (``do_bench(fn, quantiles)``; for tests).
    """

    def __init__(self, module, interpreted: bool, do_bench=None) -> None:
        self.interpreted = interpreted
        self.fixed_config = interpreted and do_bench is None
        kernels = (module.sape2_attention_forward_kernel,
                   module.sape2_attention_backward_query_kernel,
                   module.sape2_attention_backward_key_kernel)
        if self.fixed_config:
            self.forward, self.backward_query, self.backward_key = kernels
            return
        tune = functools.partial(_autotuned, do_bench=do_bench)
        self.forward = tune(kernels[0], _FORWARD_CONFIGS)
        # The backward kernels add to the factors' gradients: every timed run
        # must start from zeros again, and so must the real one.
        self.backward_query = tune(kernels[1], _BACKWARD_QUERY_CONFIGS,
                                   reset_to_zero=['GRAD_QF0', 'GRAD_QF1'])
        self.backward_key = tune(kernels[2], _BACKWARD_KEY_CONFIGS,
                                 reset_to_zero=['GRAD_KF0', 'GRAD_KF1'])

    def launch(self, kernel, grid_block: str, num_tokens: int, num_heads: int, *args,
               **constexprs) -> None:
        """Run ``kernel`` over (tiles of ``grid_block`` tokens, batch * heads)."""
        import triton
        constexprs['INTERPRETER'] = self.interpreted
        if self.fixed_config:
            constexprs.update(_INTERPRETER_CONFIG)
        kernel[lambda meta: (triton.cdiv(num_tokens, meta[grid_block]), num_heads)](
            *args, **constexprs)


def _autotuned(kernel, configs: Sequence[Tuple[int, ...]], reset_to_zero=None, do_bench=None):
    import triton
    triton_configs = [
        triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_F=block_f),
                      num_warps=num_warps, num_stages=num_stages)
        for block_m, block_n, block_f, num_warps, num_stages in configs
    ]
    return triton.autotune(configs=triton_configs, key=_AUTOTUNE_KEY,
                           reset_to_zero=reset_to_zero, do_bench=do_bench)(kernel)


@functools.lru_cache(maxsize=None)
def _launchers() -> _Launchers:
    import triton
    interpreted = _interpreter_active()
    with triton.knobs.runtime.scope():
        # Decorate in the mode of Triton's library (see the module docstring),
        # whatever TRITON_INTERPRET says now.
        triton.knobs.runtime.interpret = interpreted
        module = importlib.import_module(_KERNELS_MODULE)
    return _Launchers(module, interpreted)


def _kernels_for(device: torch.device) -> _Launchers:
    reason = triton_unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f'sape2_attention_triton cannot run on {device}: {reason}. '
                           f'sape2_block_attention computes the same on any device.')
    return _launchers()


def _padded_dims(dims: int) -> int:
    """Power-of-two block covering a head dim (>= 16, the smallest tl.dot size)."""
    return max(16, 1 << (dims - 1).bit_length())


# -------------------------------------------------------------------- checks
def _check_inputs(q: Tensor, k: Tensor, v: Tensor, query_factors: Sequence[Tensor],
                  key_factors: Sequence[Tensor], floors: Optional[Tensor], root: bool) -> None:
    """Clear errors for arguments the kernels do not take."""
    if q.dim() < 2 or q.shape != k.shape:
        raise ValueError(f'q and k must have one shape (..., N, d); got {tuple(q.shape)} '
                         f'and {tuple(k.shape)}.')
    if v.dim() != q.dim() or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f'v must be (..., N, dv) with the batch dims and N of q '
                         f'{tuple(q.shape)}; got {tuple(v.shape)}.')
    for name, dims in (('q/k', q.shape[-1]), ('v', v.shape[-1])):
        if not 1 <= dims <= MAX_HEAD_DIMS:
            raise ValueError(f'The head dim of {name} must be in 1..{MAX_HEAD_DIMS}; got {dims}.')
    if q.shape[-2] < 1:
        raise ValueError('Need at least one token.')
    if q.dtype not in Q_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f'q, k and v must share one dtype of {Q_DTYPES}; got {q.dtype}, '
                        f'{k.dtype}, {v.dtype}.')
    num_axes = len(query_factors)
    if num_axes != len(key_factors) or num_axes not in (1, 2):
        raise ValueError(f'Need the query and key factors of 1 or 2 axes (concatenate the '
                         f'axes into one for squared distances); got {num_axes} query and '
                         f'{len(key_factors)} key factors.')
    for axis, (query_factor, key_factor) in enumerate(zip(query_factors, key_factors)):
        if query_factor.shape != key_factor.shape or query_factor.shape[:-1] != q.shape[:-1]:
            raise ValueError(f'The factors of axis {axis} must both be (..., N, L + 2) with '
                             f'the batch dims and N of q {tuple(q.shape)}; got '
                             f'{tuple(query_factor.shape)} and {tuple(key_factor.shape)}.')
        if query_factor.shape[-1] < 1:
            raise ValueError(f'The factors of axis {axis} are empty.')
        if query_factor.dtype != torch.float32 or key_factor.dtype != torch.float32:
            raise TypeError(f'The factors must be float32 (the matmul form of squared '
                            f'distances cancels too much in half precision); axis {axis} has '
                            f'{query_factor.dtype} and {key_factor.dtype}.')
    if root:
        if floors is None:
            raise ValueError('root=True needs the rounding floors of the squared distances '
                             '(rounding_floor of each axis\' key factors).')
        expected = (*q.shape[:-2], num_axes)
        if floors.dim() > len(expected) or any(
                size not in (1, want) for size, want in zip(floors.shape[::-1], expected[::-1])):
            raise ValueError(f'floors must broadcast to (..., num_axes) = {expected}; got '
                             f'{tuple(floors.shape)}.')
    devices = {t.device for t in (q, k, v, *query_factors, *key_factors)}
    if root:
        devices.add(floors.device)
    if len(devices) > 1:
        raise ValueError(f'All tensors must be on one device; got {sorted(map(str, devices))}.')


def _floor_table(floors: Optional[Tensor], q: Tensor, num_axes: int) -> Tensor:
    """``(B*H, num_axes)`` float32 floors; zeros (unread) for squared distances."""
    batch_shape = q.shape[:-2]
    if floors is None:
        return torch.zeros(max(1, batch_shape.numel()), num_axes, device=q.device)
    return floors.detach().expand(*batch_shape, num_axes).reshape(-1, num_axes).to(
        torch.float32).contiguous()


def _problem_args(q3: Tensor, v3: Tensor, query_factors: List[Tensor], root: bool,
                  sign: float) -> Tuple[tuple, dict]:
    """Scalars and compile-time constants shared by the three kernels."""
    num_tokens, head_dims = q3.shape[-2:]
    log2e = 1.4426950408889634
    scalars = (num_tokens, head_dims, v3.shape[-1], query_factors[0].shape[-1],
               query_factors[-1].shape[-1], head_dims**-0.5 * log2e, sign * log2e)
    constexprs = dict(NUM_AXES=len(query_factors), ROOT=root, BLOCK_D=_padded_dims(head_dims),
                      BLOCK_DV=_padded_dims(v3.shape[-1]))
    return scalars, constexprs


def _tokens_bucket(num_tokens: int) -> int:
    """Autotuning key: problems within a factor of 2 in N share a configuration."""
    return 1 << (num_tokens - 1).bit_length()


# ----------------------------------------------------------- custom operators
@torch.library.custom_op('mmsape::sape2_attention_triton', mutates_args=())
def sape2_attention_triton_forward(q: Tensor, k: Tensor, v: Tensor, query_factors: List[Tensor],
                                   key_factors: List[Tensor], floors: Optional[Tensor],
                                   root: bool, sign: float) -> Tuple[Tensor, Tensor]:
    """The forward kernel: ``(out, lse)`` in float32, ``lse`` the ``(..., N)``
    row log-sum-exp of the logits. See :func:`sape2_attention_triton`.

    The output is float32, computed with ``P`` split into a half-precision
    part and its remainder for half inputs, because the backward's row term
    ``delta = rowsum(dO * O)`` needs it to that precision: from a
    bfloat16-rounded output (or ``P``), the rounding dominates the factors'
    gradients (2% of their scale at 1024 tokens instead of 1e-6, measured
    through the interpreter). Flash attention's dq and dk tolerate such errors;
    the factors' gradients cancel on their way to the SaPE vectors.
    """
    _check_inputs(q, k, v, query_factors, key_factors, floors, root)
    kernels = _kernels_for(q.device)
    q3, k3, v3 = (heads_first(t) for t in (q, k, v))
    qf3, kf3 = [heads_first(f) for f in query_factors], [heads_first(f) for f in key_factors]
    num_heads, num_tokens = q3.shape[:2]
    out = torch.empty(v3.shape, device=q.device, dtype=torch.float32)
    lse = torch.empty(num_heads, num_tokens, device=q.device, dtype=torch.float32)
    scalars, constexprs = _problem_args(q3, v3, qf3, root, sign)
    kernels.launch(kernels.forward, 'BLOCK_M', num_tokens, num_heads,
                   q3, k3, v3, qf3[0], kf3[0], qf3[-1], kf3[-1],
                   _floor_table(floors, q, len(qf3)), out, lse,
                   *scalars, _tokens_bucket(num_tokens), **constexprs)
    return out.view(v.shape), lse.view(q.shape[:-1])


@sape2_attention_triton_forward.register_fake
def _(q, k, v, query_factors, key_factors, floors, root, sign):
    _check_inputs(q, k, v, query_factors, key_factors, floors, root)
    # Contiguous, like the kernels' outputs, whatever the inputs' strides.
    return (v.new_empty(v.shape, dtype=torch.float32),
            q.new_empty(q.shape[:-1], dtype=torch.float32))


@torch.library.custom_op('mmsape::sape2_attention_triton_backward', mutates_args=())
def sape2_attention_triton_backward(
        grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
        out: Tensor, lse: Tensor, query_factors: List[Tensor], key_factors: List[Tensor],
        floors: Optional[Tensor], root: bool,
        sign: float) -> Tuple[Tensor, Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The backward kernels: gradients of q, k, v and every factor.

    ``grad_lse`` (the gradient of the forward's lse output, or None) enters
    through the softmax backward's row term: ``dS = P * (dP - delta +
    grad_lse)``.
    """
    kernels = _kernels_for(q.device)
    q3, k3, v3, grad_out3 = (heads_first(t) for t in (q, k, v, grad_out))
    qf3, kf3 = [heads_first(f) for f in query_factors], [heads_first(f) for f in key_factors]
    num_heads, num_tokens = q3.shape[:2]
    lse2 = lse.reshape(num_heads, num_tokens).contiguous()
    delta = (grad_out3.float() * out.reshape(grad_out3.shape).float()).sum(-1)
    # dO meets v on tensor cores: in v's dtype (a half output's gradient is).
    grad_out3 = grad_out3.to(v.dtype)
    if grad_lse is not None:
        delta -= grad_lse.reshape(delta.shape)
    floor_table = _floor_table(floors, q, len(qf3))
    grad_q, grad_k, grad_v = (torch.empty_like(t) for t in (q3, k3, v3))
    # The kernels add each tile's share to the factors' gradients.
    grad_qf, grad_kf = [torch.zeros_like(f) for f in qf3], [torch.zeros_like(f) for f in kf3]
    scalars, constexprs = _problem_args(q3, v3, qf3, root, sign)
    scalars += (q3.shape[-1]**-0.5, sign, _tokens_bucket(num_tokens))
    common = (q3, k3, v3, qf3[0], kf3[0], qf3[-1], kf3[-1], floor_table, grad_out3, lse2, delta)
    kernels.launch(kernels.backward_query, 'BLOCK_M', num_tokens, num_heads,
                   *common, grad_q, grad_qf[0], grad_qf[-1], *scalars, **constexprs)
    kernels.launch(kernels.backward_key, 'BLOCK_N', num_tokens, num_heads,
                   *common, grad_k, grad_v, grad_kf[0], grad_kf[-1], *scalars, **constexprs)
    return (grad_q.view(q.shape), grad_k.view(k.shape), grad_v.view(v.shape),
            [g.view(f.shape) for g, f in zip(grad_qf, query_factors)],
            [g.view(f.shape) for g, f in zip(grad_kf, key_factors)])


@sape2_attention_triton_backward.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, query_factors, key_factors, floors, root, sign):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            [f.new_empty(f.shape) for f in query_factors],
            [f.new_empty(f.shape) for f in key_factors])


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, query_factors, key_factors, floors, root, sign = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, floors, *query_factors, *key_factors)
    ctx.num_axes, ctx.root, ctx.sign = len(query_factors), root, sign


def _backward(ctx, grad_out: Tensor, grad_lse: Optional[Tensor]):
    q, k, v, out, lse, floors, *factors = ctx.saved_tensors
    query_factors, key_factors = factors[:ctx.num_axes], factors[ctx.num_axes:]
    grad_q, grad_k, grad_v, grad_qf, grad_kf = sape2_attention_triton_backward(
        grad_out, grad_lse, q, k, v, out, lse, query_factors, key_factors, floors, ctx.root,
        ctx.sign)
    return grad_q, grad_k, grad_v, grad_qf, grad_kf, None, None, None


sape2_attention_triton_forward.register_autograd(_backward, setup_context=_setup_context)


def sape2_attention_triton(q: Tensor, k: Tensor, v: Tensor, query_factors: Sequence[Tensor],
                           key_factors: Sequence[Tensor], floors: Optional[Tensor], root: bool,
                           sign: float = 1.) -> Tensor:
    """``softmax(q k^T / sqrt(d) + sign * bias) v`` with the SaPE² bias, exactly,
    by fused Triton kernels (differentiable; O(N) memory per head).

    The arguments mean what they mean for ``sape2_block_attention``.

    Args:
        q (Tensor): ``(..., N, d)`` queries, float32 / float16 / bfloat16,
            ``d <= 256``.
        k (Tensor): ``(..., N, d)`` keys, q's dtype.
        v (Tensor): ``(..., N, dv)`` values, q's dtype.
        query_factors (Sequence[Tensor]): Per axis (1 or 2), ``(..., N, L_a + 2)``
            float32 query factors of ``squared_distance_factors`` (all-zero rows
            for prefix tokens).
        key_factors (Sequence[Tensor]): Per axis, the float32 key factors.
        floors (Tensor, optional): ``(..., num_axes)`` rounding floors of the
            squared distances (``rounding_floor``), broadcast over the batch
            dims; needed with ``root=True``, ignored otherwise.
        root (bool): True: the bias sums the per-axis distances (0 with
            gradient 0 at or below the floor); False: it sums the squared
            distances (pass the concatenated factors as one axis).
        sign (float): Sign of the bias. Defaults to 1.

    Returns:
        Tensor: ``(..., N, dv)`` in v's dtype (float32 accumulation; float32
        distances).
    """
    query_factors, key_factors = list(query_factors), list(key_factors)
    _check_inputs(q, k, v, query_factors, key_factors, floors, root)
    out, _ = sape2_attention_triton_forward(q, k, v, query_factors, key_factors,
                                            floors if root else None, bool(root), float(sign))
    return out.to(v.dtype)


__all__ = ['MAX_HEAD_DIMS', 'MIN_CUDA_CAPABILITY', 'sape2_attention_triton',
           'sape2_attention_triton_backward', 'sape2_attention_triton_forward',
           'triton_available', 'triton_unavailable_reason']
