"""SaPE² operations: the functional math, the exact block-attention kernels and
their compiled CPU source (``csrc/``).

:mod:`.functional` holds the equations as tensor functions, :mod:`.block_attention`
the FlashAttention-style kernels and their dispatch, :mod:`.sape2_attention_cpu`
the loader of the compiled CPU kernel, :mod:`.sape2_attention_triton` the fused
GPU kernels (imported on demand: it needs Triton); every kernel is a PyTorch
custom operator (``torch.ops.mmsape.*``, :mod:`.attention_autograd`). The
registered module that owns the tables is :class:`mmsape.models.SaPE2`.
"""
from .block_attention import (
    BLOCK_ELEMENTS,
    KERNELS,
    TRITON_ENV,
    checkpointed_block_attention,
    compiled_kernel_for,
    sape2_attention_python_backward,
    sape2_attention_python_forward,
    sape2_block_attention,
    uses_compiled_kernel,
)
from .functional import (
    axis_sape_vectors,
    contextual_positions,
    fused_squared_distance_qk,
    interpolate_table,
    pairwise_l2,
    pairwise_squared_l2,
    rounding_floor,
    safe_sqrt,
    sape_bias,
    sape_vectors,
    squared_distance_factors,
    table_positions,
)
from .sape2_attention_cpu import (
    CPU_KERNEL_ENV,
    load_cpu_kernel,
    sape2_attention_cpu_backward,
    sape2_attention_cpu_forward,
    uses_cpu_kernel,
)

__all__ = [
    'contextual_positions', 'table_positions', 'interpolate_table', 'axis_sape_vectors',
    'sape_vectors', 'squared_distance_factors', 'pairwise_squared_l2', 'rounding_floor',
    'safe_sqrt', 'pairwise_l2', 'sape_bias', 'fused_squared_distance_qk', 'BLOCK_ELEMENTS',
    'KERNELS', 'TRITON_ENV', 'checkpointed_block_attention', 'compiled_kernel_for',
    'sape2_attention_python_forward', 'sape2_attention_python_backward',
    'sape2_block_attention', 'uses_compiled_kernel', 'CPU_KERNEL_ENV', 'load_cpu_kernel',
    'sape2_attention_cpu_forward', 'sape2_attention_cpu_backward', 'uses_cpu_kernel'
]
