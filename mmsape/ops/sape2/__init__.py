"""SaPE² operations: the functional math, the exact block-attention kernels and
their compiled CPU source (``csrc/``).

:mod:`.functional` holds the equations as tensor functions, :mod:`.dispatch`
the one decision of which path computes an attention (:func:`choose_sape2_kernel`),
:mod:`.block_attention` the FlashAttention-style kernels of the distance bias,
:mod:`.lookup_attention` those of the lookup bias of query-relative SaPE²,
:mod:`.sape2_attention_cpu` the loader of the compiled CPU kernels,
:mod:`.sape2_attention_triton` the fused GPU kernels (Triton is imported on
demand). The kernels are PyTorch custom operators (``torch.ops.mmsape.*``,
:mod:`.attention_autograd`). The registered module that owns the tables is
:class:`mmsape.models.SaPE2`.
"""
from .block_attention import (
    BLOCK_ELEMENTS,
    BLOCK_KERNELS,
    KERNELS,
    checkpointed_block_attention,
    sape2_attention_python_backward,
    sape2_attention_python_forward,
    sape2_block_attention,
)
from .dispatch import (
    FROM_PROCESS,
    KERNEL_PATHS,
    PROCESS_ENVIRONMENT,
    TRITON_ENV,
    KernelChoice,
    KernelEnvironment,
    choose_sape2_kernel,
)
from .functional import (
    COUNT_FROM_CHOICES,
    axis_sape_vectors,
    contextual_positions,
    fused_squared_distance_qk,
    grid_coordinates,
    interpolate_table,
    lookup_bias,
    lookup_factors,
    pairwise_l2,
    pairwise_squared_l2,
    rounding_floor,
    safe_sqrt,
    sape_bias,
    sape_vectors,
    squared_distance_factors,
    table_logits,
    table_positions,
)
from .lookup_attention import LOOKUP_KERNELS, flex_lookup_attention, lookup_block_attention
from .sape2_attention_cpu import (
    CPU_KERNEL_ENV,
    REQUIRE_COMPILED_KERNELS_ENV,
    compiled_kernels_required,
    load_cpu_kernel,
    sape2_attention_cpu_backward,
    sape2_attention_cpu_forward,
    sape2_lookup_attention_cpu_backward,
    sape2_lookup_attention_cpu_forward,
)

__all__ = [
    'COUNT_FROM_CHOICES', 'contextual_positions', 'table_positions', 'interpolate_table',
    'table_logits', 'axis_sape_vectors', 'sape_vectors', 'squared_distance_factors',
    'grid_coordinates', 'lookup_bias', 'lookup_factors', 'pairwise_squared_l2',
    'rounding_floor', 'safe_sqrt', 'pairwise_l2', 'sape_bias', 'fused_squared_distance_qk',
    'BLOCK_ELEMENTS', 'BLOCK_KERNELS', 'KERNELS', 'checkpointed_block_attention',
    'sape2_attention_python_forward', 'sape2_attention_python_backward', 'sape2_block_attention',
    'FROM_PROCESS', 'KERNEL_PATHS', 'PROCESS_ENVIRONMENT', 'TRITON_ENV', 'KernelChoice',
    'KernelEnvironment', 'choose_sape2_kernel', 'LOOKUP_KERNELS', 'lookup_block_attention',
    'flex_lookup_attention', 'CPU_KERNEL_ENV', 'REQUIRE_COMPILED_KERNELS_ENV',
    'compiled_kernels_required', 'load_cpu_kernel', 'sape2_attention_cpu_forward',
    'sape2_attention_cpu_backward', 'sape2_lookup_attention_cpu_forward',
    'sape2_lookup_attention_cpu_backward'
]
