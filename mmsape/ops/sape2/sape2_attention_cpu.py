"""The compiled CPU kernels of exact SaPE² attention (``csrc/``).

For float32 CPU tensors, two kernels in one extension, both with square tiles,
one BLAS call per product and tile and the element-wise work (online softmax,
softmax backward, the bias and its chain rule) fused into one vectorised pass
per tile while it is in cache:

* the distance bias (``csrc/sape2_attention_cpu.cpp``): the distances of each
  pair of tiles computed once for both orientations (they are symmetric; the
  most expensive part of the bias); :class:`SaPE2CPUAttentionFunction`;
* the lookup bias of query-relative SaPE² (``csrc/sape2_lookup_attention_cpu.cpp``):
  ``s^x_i[x_n] + s^y_i[y_n]`` added to each logits tile by grid-row segments of
  the keys; :class:`SaPE2LookupCPUAttentionFunction`.

The extension is built with the PyTorch C++ extension tool the first time it
is needed (about a minute; cached in ``TORCH_EXTENSIONS_DIR``). Set
``MMSAPE_SAPE2_CPU_KERNEL=0`` to skip it; if it cannot be built, a warning says
why and the Python kernel of :mod:`.block_attention` runs instead, with the
same results.

Use them through :func:`~.block_attention.sape2_block_attention` and
:func:`~.lookup_attention.lookup_block_attention`, which pick the kernel for
the inputs' device and dtype.
"""
import logging
import os
import os.path as osp
import shutil
import sys
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

#: Environment variable: ``0`` skips the compiled CPU kernel.
CPU_KERNEL_ENV = 'MMSAPE_SAPE2_CPU_KERNEL'
_CSRC = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc')
_CPU_KERNEL_SOURCES = [osp.join(_CSRC, name) for name in (
    'pybind.cpp', 'sape2_attention_cpu.cpp', 'sape2_lookup_attention_cpu.cpp')]
# The loaded extension, False once loading failed, None before the first try.
_cpu_kernel = None

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
    Python kernel takes over, with the same results.
    """
    global _cpu_kernel
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
            warnings.warn(
                f'The compiled SaPE² CPU kernel could not be built ({type(error).__name__}: '
                f'{error}); the Python kernel runs instead (same results, about 1.5x '
                f'slower). Install a C++ compiler and ninja to get it, or set '
                f'{CPU_KERNEL_ENV}=0 to skip the attempt.', RuntimeWarning, stacklevel=2)
    return _cpu_kernel or None


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


class SaPE2CPUAttentionFunction(torch.autograd.Function):
    """Exact SaPE² attention through the compiled CPU kernel; O(N) memory.

    The factors must be symmetric (see ``symmetric`` of
    :func:`~.block_attention.sape2_block_attention`). Use through that function.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, floors: Optional[Tensor],
                root: bool, sign: float, *factors: Tensor) -> Tensor:
        kernel = load_cpu_kernel()
        num_axes = len(factors) // 2
        batch_shape, num_tokens = q.shape[:-2], q.shape[-2]
        q3, k3, v3, *factors3 = (t.reshape(-1, num_tokens, t.shape[-1])
                                 for t in (q, k, v, *factors))
        floors2 = (floors.detach().reshape(q3.shape[0], num_axes).contiguous()
                   if root else q3.new_empty(0))
        scale = q.shape[-1]**-0.5
        out, lse = kernel.forward(q3, k3, v3, factors3[:num_axes], factors3[num_axes:], floors2,
                                  root, sign, scale)
        ctx.save_for_backward(q3, k3, v3, out, lse, floors2, *factors3)
        ctx.root, ctx.sign, ctx.scale, ctx.num_axes = root, sign, scale, num_axes
        ctx.shapes = (q.shape, k.shape, v.shape, *(f.shape for f in factors))
        return out.view(*batch_shape, num_tokens, v.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        q3, k3, v3, out, lse, floors2, *factors3 = ctx.saved_tensors
        grad_out = grad_out.reshape(out.shape).contiguous()
        grads = load_cpu_kernel().backward(
            grad_out, q3, k3, v3, out, lse, factors3[:ctx.num_axes], factors3[ctx.num_axes:],
            floors2, ctx.root, ctx.sign, ctx.scale)
        grads = [g.view(shape) if need else None
                 for g, shape, need in zip(grads, ctx.shapes,
                                           ctx.needs_input_grad[:3] + ctx.needs_input_grad[6:])]
        return (*grads[:3], None, None, None, *grads[3:])


class SaPE2LookupCPUAttentionFunction(torch.autograd.Function):
    """Query-relative SaPE² attention with the lookup bias through the compiled
    CPU kernel; O(N) memory.

    ``softmax(q k^T / sqrt(d) + bias) v`` with ``bias_in = s^x_i[x_n] + s^y_i[y_n]``
    between patch tokens (0 in the rows and columns of the ``num_prefix``
    prefix tokens). Use through
    :func:`~.lookup_attention.lookup_block_attention`. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, x_vectors: Tensor,
                y_vectors: Tensor, height: int, width: int, num_prefix: int) -> Tensor:
        batch_shape, num_tokens = q.shape[:-2], q.shape[-2]
        q3, k3, v3 = (t.reshape(-1, num_tokens, t.shape[-1]) for t in (q, k, v))
        x3, y3 = (t.reshape(-1, height * width, t.shape[-1]) for t in (x_vectors, y_vectors))
        scale = q.shape[-1]**-0.5
        out, lse = load_cpu_kernel().lookup_forward(q3, k3, v3, x3, y3, height, width,
                                                    num_prefix, scale)
        ctx.save_for_backward(q3, k3, v3, out, lse, x3, y3)
        ctx.grid, ctx.scale = (height, width, num_prefix), scale
        ctx.shapes = (q.shape, k.shape, v.shape, x_vectors.shape, y_vectors.shape)
        return out.view(*batch_shape, num_tokens, v.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        q3, k3, v3, out, lse, x3, y3 = ctx.saved_tensors
        grad_out = grad_out.reshape(out.shape).contiguous()
        grads = load_cpu_kernel().lookup_backward(grad_out, q3, k3, v3, out, lse, x3, y3,
                                                  *ctx.grid, ctx.scale)
        grads = [g.view(shape) if need else None
                 for g, shape, need in zip(grads, ctx.shapes, ctx.needs_input_grad)]
        return (*grads, None, None, None)


def uses_cpu_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`~.block_attention.sape2_block_attention` runs (symmetric)
    inputs of this device and dtype through the compiled CPU kernel."""
    return device.type == 'cpu' and dtype == torch.float32 and load_cpu_kernel() is not None


__all__ = ['CPU_KERNEL_ENV', 'SaPE2CPUAttentionFunction', 'SaPE2LookupCPUAttentionFunction',
           'load_cpu_kernel', 'uses_cpu_kernel']
