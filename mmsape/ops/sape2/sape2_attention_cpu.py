"""The compiled CPU kernels of exact SaPE² attention (``csrc/``).

For float32 CPU tensors, two kernels in one extension, both with square tiles,
one BLAS call per product and tile and the element-wise work (online softmax,
softmax backward, the bias and its chain rule) fused into one vectorised pass
per tile while it is in cache:

* the distance bias (``csrc/sape2_attention_cpu.cpp``): the distances of each
  pair of tiles computed once for both orientations (they are symmetric; the
  most expensive part of the bias); the operators ``mmsape::sape2_attention_cpu``
  (forward: output and row log-sum-exp) and ``mmsape::sape2_attention_cpu_backward``;
* the lookup bias of query-relative SaPE² (``csrc/sape2_lookup_attention_cpu.cpp``):
  ``s^x_i[x_n] + s^y_i[y_n]`` added to each logits tile by grid-row segments of
  the keys; the operators ``mmsape::sape2_lookup_attention_cpu`` and
  ``mmsape::sape2_lookup_attention_cpu_backward``.

The extension is built with the PyTorch C++ extension tool the first time it
is needed (about a minute; cached in ``TORCH_EXTENSIONS_DIR``). Set
``MMSAPE_SAPE2_CPU_KERNEL=0`` to skip it; if it cannot be built, a warning says
why and the Python kernel of :mod:`.block_attention` runs instead, with the
same results. ``MMSAPE_REQUIRE_COMPILED_KERNELS=1`` (CI sets it) makes a
failed build an error instead.

The operators have fake implementations and autograd (:mod:`.attention_autograd`):
``torch.compile`` traces them as single nodes, without a graph break, and
``torch.export`` records one op. Use the kernels through
:func:`~.block_attention.sape2_block_attention` and
:func:`~.lookup_attention.lookup_block_attention`, whose kernel
:func:`~.dispatch.choose_sape2_kernel` picks.
"""
import logging
import os
import os.path as osp
import shutil
import sys
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .attention_autograd import fake_attention_outputs, heads_first, register_attention_autograd

#: Environment variable: ``0`` skips the compiled CPU kernel.
CPU_KERNEL_ENV = 'MMSAPE_SAPE2_CPU_KERNEL'
#: Environment variable: ``1`` makes a failed build of the compiled kernels an
#: error rather than a warning and a fallback (for CI, where the tests that
#: compare kernels must not pass by skipping the compiled ones).
REQUIRE_COMPILED_KERNELS_ENV = 'MMSAPE_REQUIRE_COMPILED_KERNELS'
_CSRC = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc')
_CPU_KERNEL_SOURCES = [osp.join(_CSRC, name) for name in (
    'pybind.cpp', 'sape2_attention_cpu.cpp', 'sape2_lookup_attention_cpu.cpp')]
# The loaded extension, False once loading failed, None before the first try.
_cpu_kernel = None
# Why the build failed, once it has.
_build_failure = ''

# Compiler flags matching PyTorch's own vectorised CPU code paths
# (``at::vec::Vectorized`` picks its implementation from these macros).
_CAPABILITY_FLAGS = {
    'AVX512': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mfma',
               '-DCPU_CAPABILITY=AVX512', '-DCPU_CAPABILITY_AVX512'],
    'AVX2': ['-mavx2', '-mfma', '-DCPU_CAPABILITY=AVX2', '-DCPU_CAPABILITY_AVX2'],
}


def load_cpu_kernel():
    """The compiled CPU kernel, built on first use; None where it is unavailable.

    Unavailable when ``MMSAPE_SAPE2_CPU_KERNEL=0`` or when the build fails (no
    C++ compiler, for one); the failure is reported once as a warning and the
    Python kernel takes over, with the same results. With
    ``MMSAPE_REQUIRE_COMPILED_KERNELS=1`` a failed build raises instead, on
    every call.

    Raises:
        RuntimeError: The build failed and ``MMSAPE_REQUIRE_COMPILED_KERNELS=1``.
    """
    global _cpu_kernel, _build_failure
    if os.environ.get(CPU_KERNEL_ENV, '1') == '0':
        return None
    if _cpu_kernel is None:
        capability = torch.backends.cpu.get_cpu_capability()
        _put_ninja_on_path()
        try:
            load = _import_extension_loader()
            _cpu_kernel = load(
                name=f'mmsape_sape2_attention_cpu_{capability.lower()}',
                sources=_CPU_KERNEL_SOURCES,
                extra_include_paths=[_CSRC],
                extra_cflags=['-O3'] + _CAPABILITY_FLAGS.get(capability, []),
                verbose=False)
        except Exception as error:  # a missing compiler raises several kinds
            _cpu_kernel = False
            _build_failure = (f'The compiled SaPE² CPU kernel could not be built from '
                              f'{_CSRC} ({type(error).__name__}: {error})')
            if not compiled_kernels_required():
                warnings.warn(
                    f'{_build_failure}; the Python kernel runs instead (same results, about '
                    f'1.5x slower). Install a C++ compiler and ninja to get it, or set '
                    f'{CPU_KERNEL_ENV}=0 to skip the attempt.', RuntimeWarning, stacklevel=2)
    if _cpu_kernel is False and compiled_kernels_required():
        raise RuntimeError(
            f'{_build_failure}. {REQUIRE_COMPILED_KERNELS_ENV}=1 makes this an error: install '
            f'a C++ compiler and ninja (and check TORCH_EXTENSIONS_DIR is writable), or unset '
            f'{REQUIRE_COMPILED_KERNELS_ENV} to let the Python kernel run instead.')
    return _cpu_kernel or None


def compiled_kernels_required() -> bool:
    """Whether ``MMSAPE_REQUIRE_COMPILED_KERNELS=1``: the compiled kernels must
    build (failures are errors, and tests of them fail instead of skipping)."""
    return os.environ.get(REQUIRE_COMPILED_KERNELS_ENV, '0') == '1'


def _import_extension_loader():
    """``torch.utils.cpp_extension.load``, imported without its CUDA_HOME warning
    (irrelevant to a CPU-only extension)."""
    logger = logging.getLogger('torch.utils.cpp_extension')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        logger.setLevel(level)
    return load


def _put_ninja_on_path() -> None:
    """PyTorch's extension builder runs ``ninja`` from PATH; the one pip installs
    (requirements/runtime.txt) sits next to the interpreter, which is not on PATH
    when a virtual environment's python is run without activating it."""
    interpreter_dir = osp.dirname(sys.executable)
    if shutil.which('ninja') is None and shutil.which('ninja', path=interpreter_dir):
        os.environ['PATH'] = interpreter_dir + os.pathsep + os.environ.get('PATH', '')


@torch.library.custom_op('mmsape::sape2_attention_cpu', mutates_args=(), device_types='cpu')
def sape2_attention_cpu_forward(q: Tensor, k: Tensor, v: Tensor, query_factors: List[Tensor],
                                key_factors: List[Tensor], floors: Optional[Tensor], root: bool,
                                sign: float) -> Tuple[Tensor, Tensor]:
    """The forward kernel: ``(out, lse)``, ``lse`` the ``(..., N)`` row
    log-sum-exp of the logits. See :func:`sape2_attention_cpu`."""
    num_axes = len(query_factors)
    q3, k3, v3 = (heads_first(t) for t in (q, k, v))
    qf3, kf3 = [heads_first(f) for f in query_factors], [heads_first(f) for f in key_factors]
    out, lse = _loaded_kernel().forward(q3, k3, v3, qf3, kf3, _floor_table(floors, q3, num_axes),
                                        root, sign, q.shape[-1]**-0.5)
    return out.view(v.shape), lse.view(q.shape[:-1])


@sape2_attention_cpu_forward.register_fake
def _(q, k, v, query_factors, key_factors, floors, root, sign):
    return fake_attention_outputs(q, v)


@torch.library.custom_op('mmsape::sape2_attention_cpu_backward', mutates_args=(),
                         device_types='cpu')
def sape2_attention_cpu_backward(
        grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
        query_factors: List[Tensor], key_factors: List[Tensor], floors: Optional[Tensor],
        root: bool, sign: float) -> Tuple[Tensor, Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The backward kernel: gradients of q, k, v and of every factor."""
    num_axes = len(query_factors)
    q3, k3, v3, out3 = (heads_first(t) for t in (q, k, v, out))
    qf3, kf3 = [heads_first(f) for f in query_factors], [heads_first(f) for f in key_factors]
    grads = _loaded_kernel().backward(
        grad_out.reshape(out3.shape).contiguous(), q3, k3, v3, out3,
        lse.reshape(out3.shape[:-1]).contiguous(), qf3, kf3, _floor_table(floors, q3, num_axes),
        root, sign, q.shape[-1]**-0.5)
    grad_q, grad_k, grad_v = (g.view(t.shape) for g, t in zip(grads[:3], (q, k, v)))
    return (grad_q, grad_k, grad_v,
            [g.view(f.shape) for g, f in zip(grads[3:3 + num_axes], query_factors)],
            [g.view(f.shape) for g, f in zip(grads[3 + num_axes:], key_factors)])


@sape2_attention_cpu_backward.register_fake
def _(grad_out, q, k, v, out, lse, query_factors, key_factors, floors, root, sign):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            [f.new_empty(f.shape) for f in query_factors],
            [f.new_empty(f.shape) for f in key_factors])


register_attention_autograd(sape2_attention_cpu_forward, sape2_attention_cpu_backward,
                            num_tensor_args=6)


def sape2_attention_cpu(q: Tensor, k: Tensor, v: Tensor, query_factors: Sequence[Tensor],
                        key_factors: Sequence[Tensor], floors: Optional[Tensor], root: bool,
                        sign: float = 1.) -> Tensor:
    """Exact SaPE² attention through the compiled CPU kernel; O(N) memory.

    Float32 CPU tensors; the arguments mean what they mean for
    :func:`~.block_attention.sape2_block_attention`, whose ``symmetric``
    factors this kernel needs. Differentiable (not twice). Use through that
    function, which checks the inputs and asks for the kernel.

    Returns:
        Tensor: ``(..., N, dv)``.
    """
    out, _ = sape2_attention_cpu_forward(q, k, v, list(query_factors), list(key_factors),
                                         floors if root else None, bool(root), float(sign))
    return out


def _loaded_kernel():
    kernel = load_cpu_kernel()
    if kernel is None:
        raise RuntimeError('The compiled SaPE² CPU kernel is not available (see the warning '
                           'of load_cpu_kernel, or unset MMSAPE_SAPE2_CPU_KERNEL=0); '
                           'sape2_block_attention runs the Python kernel instead.')
    return kernel


def _floor_table(floors: Optional[Tensor], q3: Tensor, num_axes: int) -> Tensor:
    """``(B*heads, num_axes)`` floors; an empty tensor (unread) for squared distances."""
    if floors is None:
        return q3.new_empty(0)
    return floors.detach().reshape(q3.shape[0], num_axes).contiguous()


@torch.library.custom_op('mmsape::sape2_lookup_attention_cpu', mutates_args=(),
                         device_types='cpu')
def sape2_lookup_attention_cpu_forward(q: Tensor, k: Tensor, v: Tensor, x_vectors: Tensor,
                                       y_vectors: Tensor, height: int, width: int,
                                       num_prefix: int) -> Tuple[Tensor, Tensor]:
    """Query-relative SaPE² attention with the lookup bias through the compiled
    CPU kernel: ``(out, lse)``; O(N) memory.

    ``softmax(q k^T / sqrt(d) + bias) v`` with ``bias_in = s^x_i[x_n] + s^y_i[y_n]``
    between patch tokens (0 in the rows and columns of the ``num_prefix``
    prefix tokens). Use through :func:`~.lookup_attention.lookup_block_attention`.
    """
    q3, k3, v3 = (heads_first(t) for t in (q, k, v))
    x3, y3 = (heads_first(t) for t in (x_vectors, y_vectors))
    out, lse = _loaded_kernel().lookup_forward(q3, k3, v3, x3, y3, height, width, num_prefix,
                                               q.shape[-1]**-0.5)
    return out.view(v.shape), lse.view(q.shape[:-1])


@sape2_lookup_attention_cpu_forward.register_fake
def _(q, k, v, x_vectors, y_vectors, height, width, num_prefix):
    return fake_attention_outputs(q, v)


@torch.library.custom_op('mmsape::sape2_lookup_attention_cpu_backward', mutates_args=(),
                         device_types='cpu')
def sape2_lookup_attention_cpu_backward(
        grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
        x_vectors: Tensor, y_vectors: Tensor, height: int, width: int,
        num_prefix: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The lookup kernel's backward: gradients of q, k, v and of both SaPE vectors."""
    q3, k3, v3, out3 = (heads_first(t) for t in (q, k, v, out))
    x3, y3 = (heads_first(t) for t in (x_vectors, y_vectors))
    grads = _loaded_kernel().lookup_backward(
        grad_out.reshape(out3.shape).contiguous(), q3, k3, v3, out3,
        lse.reshape(out3.shape[:-1]).contiguous(), x3, y3, height, width, num_prefix,
        q.shape[-1]**-0.5)
    return tuple(g.view(t.shape) for g, t in zip(grads, (q, k, v, x_vectors, y_vectors)))


@sape2_lookup_attention_cpu_backward.register_fake
def _(grad_out, q, k, v, out, lse, x_vectors, y_vectors, height, width, num_prefix):
    return tuple(t.new_empty(t.shape) for t in (q, k, v, x_vectors, y_vectors))


register_attention_autograd(sape2_lookup_attention_cpu_forward,
                            sape2_lookup_attention_cpu_backward, num_tensor_args=5)


__all__ = ['CPU_KERNEL_ENV', 'REQUIRE_COMPILED_KERNELS_ENV', 'compiled_kernels_required',
           'load_cpu_kernel', 'sape2_attention_cpu', 'sape2_attention_cpu_backward',
           'sape2_attention_cpu_forward', 'sape2_lookup_attention_cpu_backward',
           'sape2_lookup_attention_cpu_forward']
