"""Which path computes a SaPE² attention: the one decision, for the module and the kernels.

:func:`choose_sape2_kernel` maps what a layer asks for (bias form, distance,
requested ``impl``), what its tensors are (device, dtype, token count, head
dim, attention dropout) and what the process offers (the environment switches,
whether the compiled CPU kernel was built, whether Triton runs on the GPU) to
the path that then runs, a :class:`KernelChoice`.
:meth:`mmsape.models.SaPE2.resolve_impl`,
:func:`~.block_attention.sape2_block_attention` and
:func:`~.lookup_attention.lookup_block_attention` all ask it, and nothing else
decides. The paths (:data:`KERNEL_PATHS`), all exact up to float rounding:

* ``dense`` (``impl='dense'``): the (B, heads, N, N) bias as the mask of
  ``scaled_dot_product_attention``, the paper's way;
* ``cpu_tiles`` (``'chunked'``): the compiled CPU kernel of the distance bias,
  in cache-sized tiles (``csrc/sape2_attention_cpu.cpp``);
* ``cpu_lookup`` (``'chunked'``): the compiled CPU kernel of the lookup bias
  (``csrc/sape2_lookup_attention_cpu.cpp``);
* ``triton`` (``'chunked'``): the fused Triton kernels, on CUDA GPUs;
* ``python_blocks`` (``'chunked'``): the pure-PyTorch kernel over blocks of
  queries;
* ``checkpointed_sdpa_blocks`` (``'chunked'`` or ``'flex'`` with attention
  dropout, which the kernels above lack): blocks of queries through SDPA with
  their bias as mask, recomputed in backward;
* ``fused_sdpa`` (``'fused'``): plain fused SDPA on q and k augmented with the
  bias factors (squared distance, lookup);
* ``flex`` (``'flex'``): FlexAttention gathering the lookup bias.

``impl='auto'`` picks, for the distance bias, a compiled kernel wherever one
runs (``cpu_tiles``: float32 on the CPU; ``triton``: float32 factors on a CUDA
GPU where Triton runs, at most 2 axes and head dims <= 256), and otherwise
``fused_sdpa`` for the squared distance, ``dense`` when all tokens fit in one
chunk and the Python or checkpointed blocks beyond. For the lookup bias it
picks ``cpu_lookup`` for float32 on the CPU, ``flex`` on CUDA and
``fused_sdpa`` elsewhere and with attention dropout. The choice names the path
that will run: ``auto`` never counts on a compiled kernel that then does not
run.

The process's side is a :class:`KernelEnvironment`; its fields default to
:data:`FROM_PROCESS`, read (once per traced graph under ``torch.compile``)
only where a decision needs them: building the CPU kernel takes a minute the
first time, and asking Triton about a GPU imports Triton. Tests pass the
fields as data, so that every row of the decision is testable without a GPU.
"""
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Set, Tuple, Union

import torch

from .sape2_attention_cpu import CPU_KERNEL_ENV, load_cpu_kernel
from .sape2_attention_triton import MAX_HEAD_DIMS as TRITON_MAX_HEAD_DIMS
from .sape2_attention_triton import triton_unavailable_reason

#: Environment variable: ``0`` skips the fused Triton kernels on CUDA (the
#: PyTorch paths run instead, as where Triton cannot run, without a warning).
TRITON_ENV = 'MMSAPE_SAPE2_TRITON'

#: Every path :func:`choose_sape2_kernel` can name, with what runs there.
KERNEL_PATHS = {
    'dense': 'the (B, heads, N, N) bias as the mask of scaled_dot_product_attention',
    'cpu_tiles': 'the compiled CPU kernel of the distance bias, in cache-sized tiles',
    'cpu_lookup': 'the compiled CPU kernel of the lookup bias',
    'triton': 'the fused Triton kernels',
    'python_blocks': 'the pure-PyTorch kernel over blocks of queries',
    'checkpointed_sdpa_blocks': 'blocks of queries through SDPA with their bias as mask, '
    'recomputed in backward',
    'fused_sdpa': 'fused SDPA on q and k augmented with the bias factors',
    'flex': 'FlexAttention gathering the lookup bias',
}
BIAS_CHOICES = ('distance', 'lookup')
DISTANCE_CHOICES = ('l2', 'rms', 'squared')
IMPL_CHOICES = ('auto', 'dense', 'chunked', 'fused', 'flex')


@dataclass(frozen=True)
class KernelChoice:
    """The path that computes a SaPE² attention, and why.

    Attributes:
        impl (str): The implementation family, what
            :meth:`mmsape.models.SaPE2.resolve_impl` returns: the requested
            ``impl``, or what ``'auto'`` resolved to.
        kernel (str): The path that runs, one of :data:`KERNEL_PATHS`.
        reason (str): Why, in one line.
    """
    impl: str
    kernel: str
    reason: str

    def __str__(self) -> str:
        return f'{self.kernel} ({self.reason})'


class _FromProcess:
    """Type of :data:`FROM_PROCESS`."""

    def __repr__(self) -> str:
        return 'FROM_PROCESS'


#: A :class:`KernelEnvironment` field to read from the process when needed.
FROM_PROCESS = _FromProcess()


@dataclass(frozen=True)
class KernelEnvironment:
    """What the process offers the decision. Every field left at
    :data:`FROM_PROCESS` is read from the process when (and only when) a
    decision needs it; tests give values instead.

    Attributes:
        cpu_kernel_enabled (bool): ``MMSAPE_SAPE2_CPU_KERNEL`` is not ``0``.
        cpu_kernel_loaded (bool): The compiled CPU kernel was built or loaded
            (:func:`~.sape2_attention_cpu.load_cpu_kernel`, which builds it on
            first use).
        triton_enabled (bool): ``MMSAPE_SAPE2_TRITON`` is not ``0``.
        triton_unavailable (str, optional): Why the Triton kernels cannot run
            on the device (no Triton, compute capability below 8.0, ...;
            :func:`~.sape2_attention_triton.triton_unavailable_reason`), None
            where they run.
    """
    cpu_kernel_enabled: Union[bool, _FromProcess] = FROM_PROCESS
    cpu_kernel_loaded: Union[bool, _FromProcess] = FROM_PROCESS
    triton_enabled: Union[bool, _FromProcess] = FROM_PROCESS
    triton_unavailable: Union[Optional[str], _FromProcess] = FROM_PROCESS


#: The environment of this process, every field read when needed.
PROCESS_ENVIRONMENT = KernelEnvironment()


# The process's answers. torch.compile calls each once per traced graph and
# keeps the answer (setting an environment variable later does not retrace).
@torch.compiler.assume_constant_result
def _cpu_kernel_enabled() -> bool:
    return os.environ.get(CPU_KERNEL_ENV, '1') != '0'


@torch.compiler.assume_constant_result
def _cpu_kernel_loaded() -> bool:
    return load_cpu_kernel() is not None


@torch.compiler.assume_constant_result
def _triton_enabled() -> bool:
    return os.environ.get(TRITON_ENV) != '0'


@torch.compiler.assume_constant_result
def _triton_unavailable(device: torch.device) -> Optional[str]:
    return triton_unavailable_reason(device)


# Reasons the Triton kernels could not run that a warning has reported.
_reported_triton_failures: Set[str] = set()


@torch.compiler.assume_constant_result
def _warn_triton_unavailable_once(reason: str, device: str) -> bool:
    """One warning per reason (per GPU model, say), not one per layer and step."""
    if reason not in _reported_triton_failures:
        _reported_triton_failures.add(reason)
        warnings.warn(
            f'The fused Triton kernels of exact SaPE² attention cannot run on {device}: '
            f'{reason}. SaPE² takes its PyTorch paths there instead (same results; slower, '
            f"and impl='dense' holds an N x N bias).", RuntimeWarning, stacklevel=3)
    return True


def choose_sape2_kernel(*,
                        bias: str,
                        impl: str = 'auto',
                        distance: str = 'l2',
                        device: Union[torch.device, str, None],
                        dtype: Optional[torch.dtype],
                        dropout_p: float = 0.,
                        num_tokens: Optional[int] = None,
                        chunk_size: int = 256,
                        head_dims: Optional[int] = None,
                        num_axes: Optional[int] = None,
                        symmetric: bool = True,
                        environment: KernelEnvironment = PROCESS_ENVIRONMENT) -> KernelChoice:
    """The path that computes a SaPE² attention (see the module docstring).

    Args:
        bias (str): ``'distance'`` (the published bias, or any bias in the
            matmul form of :func:`~.functional.squared_distance_factors`) or
            ``'lookup'`` (query-relative SaPE²'s lookup bias).
        impl (str): The requested implementation, one of ``'auto'``,
            ``'dense'``, ``'chunked'``, ``'fused'``, ``'flex'``. Defaults to
            ``'auto'``.
        distance (str): With ``bias='distance'``: ``'l2'``, ``'rms'`` (roots
            of squared distances) or ``'squared'``. Defaults to ``'l2'``.
        device (torch.device | str, optional): The device of the tensors (a
            type such as ``'cuda'`` will do); None when unknown, decided as for
            a device without compiled kernels.
        dtype (torch.dtype, optional): The dtype the bias is computed in
            (SaPE2 computes the vectors of half inputs in float32). None when
            unknown.
        dropout_p (float): Attention dropout. Defaults to 0.
        num_tokens (int, optional): N, for ``auto``'s ``dense`` below
            ``chunk_size`` tokens. Defaults to None (not dense).
        chunk_size (int): See :class:`mmsape.models.SaPE2`. Defaults to 256.
        head_dims (int, optional): The widest head dim of q, k and v (the
            Triton kernels take up to 256). None when unknown.
        num_axes (int, optional): Axes of distance factors passed to the
            kernels (the Triton kernels take 1 or 2). None: those SaPE2
            passes, 2 for roots of distances and 1 (concatenated) otherwise.
        symmetric (bool): The distance factors are those of one set of vectors
            (as SaPE2's are): the compiled CPU kernel needs it. Defaults to True.
        environment (KernelEnvironment): The process's side. Defaults to
            :data:`PROCESS_ENVIRONMENT`.

    Returns:
        KernelChoice: The path that runs, its ``impl`` family and why.
    """
    _check_choice('bias', bias, BIAS_CHOICES)
    _check_choice('impl', impl, IMPL_CHOICES)
    _check_choice('distance', distance, DISTANCE_CHOICES)
    if impl == 'flex' and bias != 'lookup':
        raise ValueError("impl='flex' computes only the lookup bias; use bias='lookup' or "
                         "another impl.")
    if impl == 'fused' and bias == 'distance' and distance != 'squared':
        raise ValueError(f"impl='fused' computes only the squared distance (or the lookup "
                         f"bias), not distance={distance!r}; use distance='squared' or "
                         f"another impl.")
    if num_axes is None:
        num_axes = 2 if bias == 'distance' and distance != 'squared' else 1
    device_type = None if device is None else torch.device(device).type
    request = _Request(bias, device, device_type, dtype, head_dims, num_axes, symmetric,
                       environment)
    if impl == 'dense':
        return KernelChoice('dense', 'dense', "impl='dense' asks for the N x N bias")
    if impl == 'fused':
        return KernelChoice('fused', 'fused_sdpa', "impl='fused' asks for SDPA on augmented q/k")
    if dropout_p > 0 and impl in ('chunked', 'flex'):
        return KernelChoice(impl, 'checkpointed_sdpa_blocks',
                            f"attention dropout, which impl='{impl}' kernels lack")
    if impl == 'flex':
        return KernelChoice('flex', 'flex', "impl='flex' asks for FlexAttention")
    if impl == 'chunked':
        return KernelChoice('chunked', *_block_kernel(request))
    if bias == 'lookup':
        return _auto_lookup(request, dropout_p)
    return _auto_distance(request, distance, dropout_p, num_tokens, chunk_size)


@dataclass(frozen=True)
class _Request:
    """What the exact block kernels' choice reads."""
    bias: str
    device: Union[torch.device, str, None]
    device_type: Optional[str]
    dtype: Optional[torch.dtype]
    head_dims: Optional[int]
    num_axes: int
    symmetric: bool
    environment: KernelEnvironment


def _block_kernel(request: _Request) -> Tuple[str, str]:
    """``(path, reason)`` of the exact O(N)-memory kernels without dropout."""
    if request.device_type == 'cpu':
        if request.dtype != torch.float32:
            return 'python_blocks', 'the compiled CPU kernels take float32, not these tensors'
        if request.bias == 'distance' and not request.symmetric:
            return 'python_blocks', ('the compiled CPU kernel needs the factors of one set of '
                                     'vectors (symmetric=True)')
        missing = _cpu_kernel_missing(request.environment)
        if missing is not None:
            return 'python_blocks', missing
        if request.bias == 'lookup':
            return 'cpu_lookup', 'float32 on the CPU, where the compiled lookup kernel runs'
        return 'cpu_tiles', 'float32 on the CPU, where the compiled kernel runs'
    if request.device_type == 'cuda':
        missing = _triton_missing(request)
        if missing is not None:
            return 'python_blocks', missing
        return 'triton', 'float32 factors on a CUDA GPU where the Triton kernels run'
    if request.device_type is None:
        return 'python_blocks', 'no tensors given: decided as for a device without kernels'
    return 'python_blocks', f'no compiled kernel for {request.device_type} tensors'


def _cpu_kernel_missing(environment: KernelEnvironment) -> Optional[str]:
    """Why the compiled CPU kernel cannot run (None where it runs)."""
    enabled = environment.cpu_kernel_enabled
    if enabled is FROM_PROCESS:
        enabled = _cpu_kernel_enabled()
    if not enabled:
        return f'{CPU_KERNEL_ENV}=0 switches the compiled CPU kernel off'
    loaded = environment.cpu_kernel_loaded
    if loaded is FROM_PROCESS:
        loaded = _cpu_kernel_loaded()
    if not loaded:
        return 'the compiled CPU kernel could not be built (see its warning)'
    return None


def _triton_missing(request: _Request) -> Optional[str]:
    """Why the Triton kernels cannot take this CUDA request (None where they can).

    Triton itself is asked only for requests the kernels could take, so that
    float64 or wide heads neither import it nor warn.
    """
    if request.dtype != torch.float32:
        return 'the Triton kernels take float32 factors, not these'
    if request.num_axes > 2:
        return f'the Triton kernels take 1 or 2 axes, not {request.num_axes}'
    if request.head_dims is not None and request.head_dims > TRITON_MAX_HEAD_DIMS:
        return f'the Triton kernels take head dims up to {TRITON_MAX_HEAD_DIMS}'
    environment = request.environment
    enabled = environment.triton_enabled
    if enabled is FROM_PROCESS:
        enabled = _triton_enabled()
    if not enabled:
        return f'{TRITON_ENV}=0 switches the Triton kernels off'
    reason = environment.triton_unavailable
    if reason is FROM_PROCESS:
        reason = _triton_unavailable(torch.device(request.device))
    if reason is None:
        return None
    _warn_triton_unavailable_once(reason, str(request.device))
    return f'the Triton kernels cannot run: {reason}'


def _auto_lookup(request: _Request, dropout_p: float) -> KernelChoice:
    if dropout_p > 0:
        return KernelChoice('fused', 'fused_sdpa',
                            'attention dropout, which the lookup kernels and FlexAttention lack')
    if request.device_type == 'cpu':
        # Measured on CPU: about plain SDPA's cost (benchmarks/bench_sape2_attention.py),
        # while fused SDPA widens the head by W + H.
        kernel, reason = _block_kernel(request)
        if kernel == 'cpu_lookup':
            return KernelChoice('chunked', kernel, reason)
        return KernelChoice('fused', 'fused_sdpa', f'{reason}; SDPA on augmented q/k instead')
    if request.device_type == 'cuda':
        # A gather in the score_mod, no wider head (not measured here).
        return KernelChoice('flex', 'flex', 'CUDA: FlexAttention gathers the bias')
    if request.device_type is None:
        return KernelChoice('fused', 'fused_sdpa', 'no tensors given: SDPA on augmented q/k')
    return KernelChoice('fused', 'fused_sdpa',
                        f'no lookup kernel for {request.device_type} tensors')


def _auto_distance(request: _Request, distance: str, dropout_p: float,
                   num_tokens: Optional[int], chunk_size: int) -> KernelChoice:
    if dropout_p > 0:
        why = 'attention dropout, which the compiled kernels lack'
    else:
        kernel, why = _block_kernel(request)
        if kernel != 'python_blocks':
            # Measured on CPU: faster than 'dense' at every size (2x at 196
            # tokens) and than fused SDPA on augmented q/k, whose head dim
            # doubles (1.4x at 1024 tokens).
            return KernelChoice('chunked', kernel, why)
    if distance == 'squared':
        return KernelChoice('fused', 'fused_sdpa', f'{why}; the squared distance is exact '
                            'in SDPA on augmented q/k')
    if num_tokens is not None and num_tokens <= chunk_size:
        return KernelChoice('dense', 'dense', f'{why}; all tokens fit in one chunk of '
                            f'{chunk_size}, so the N x N bias is no larger than a block')
    if dropout_p > 0:
        return KernelChoice('chunked', 'checkpointed_sdpa_blocks',
                            f'{why}; more tokens than one chunk of {chunk_size}')
    return KernelChoice('chunked', 'python_blocks',
                        f'{why}; more tokens than one chunk of {chunk_size}')


def _check_choice(option: str, value, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{option} must be one of {", ".join(map(repr, choices))}; '
                         f'got {value!r}.')


__all__ = [
    'FROM_PROCESS', 'KERNEL_PATHS', 'PROCESS_ENVIRONMENT', 'TRITON_ENV', 'KernelChoice',
    'KernelEnvironment', 'choose_sape2_kernel'
]
