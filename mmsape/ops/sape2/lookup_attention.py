"""Attention with the lookup bias of query-relative SaPE², without an N x N tensor.

Computes, for every batch element and head,

    out = softmax(q k^T / sqrt(d) + bias) v,   bias_in = s^x_i[x_n] + s^y_i[y_n],

between patch tokens (0 in the rows and columns of prefix tokens), where
``s^x_i`` (length W) and ``s^y_i`` (length H) are token i's SaPE vectors read at
query-relative contextual positions (:func:`~.functional.sape_vectors` with
``count_from='query'``). Per query the bias is a table of W + H scalars, so it
is a gather, never a stored N x N tensor:

* :func:`lookup_block_attention`: exact, O(N) memory for backward. The kernel
  is :func:`~.dispatch.choose_sape2_kernel`'s: float32 CPU tensors go through
  the compiled kernel (``'cpu_lookup'``:
  :func:`~.sape2_attention_cpu.sape2_lookup_attention_cpu_forward`), everything
  else through the block kernels of :mod:`.block_attention` (``'triton'`` on
  CUDA GPUs where Triton runs, ``'python_blocks'`` elsewhere) on the factors of
  :func:`~.functional.lookup_factors`;
* :func:`flex_lookup_attention`: FlexAttention with a ``score_mod`` that adds
  ``s^x[b, h, q, x(kv)] + s^y[b, h, q, y(kv)]``; compiled and
  training-capable on CUDA, inference only on CPU (a PyTorch limitation);
* plain fused attention on q and k augmented with the factors of
  :func:`~.functional.lookup_factors` (:func:`~.functional.fused_squared_distance_qk`)
  needs no kernel of its own; it widens the head by W + H.
"""
import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .block_attention import sape2_block_attention
from .dispatch import choose_sape2_kernel
from .functional import grid_coordinates, lookup_factors
from .sape2_attention_cpu import sape2_lookup_attention_cpu_forward

#: The kernels of :func:`lookup_block_attention`, by their paths of
#: :data:`~.dispatch.KERNEL_PATHS`.
LOOKUP_KERNELS = ('cpu_lookup', 'triton', 'python_blocks')


def lookup_block_attention(q: Tensor, k: Tensor, v: Tensor, x_vectors: Tensor,
                           y_vectors: Tensor, height: int, width: int,
                           num_prefix: int = 0, block_size: int = 128,
                           kernel: Optional[str] = None) -> Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` with the lookup bias, exactly, in
    tiles, without any N x N tensor saved for backward.

    Args:
        q (Tensor): ``(..., P + H*W, d)`` queries.
        k (Tensor): ``(..., P + H*W, d)`` keys.
        v (Tensor): ``(..., P + H*W, dv)`` values.
        x_vectors (Tensor): ``(..., H*W, W)`` SaPE vectors along x.
        y_vectors (Tensor): ``(..., H*W, H)`` SaPE vectors along y.
        height (int): H.
        width (int): W.
        num_prefix (int): P. Defaults to 0.
        block_size (int): Python kernel only: most queries per block (see
            :func:`~.block_attention.sape2_block_attention`). Defaults to 128.
        kernel (str, optional): Forces one of :data:`LOOKUP_KERNELS` (for tests
            and callers that have asked the dispatcher already); None asks
            :func:`~.dispatch.choose_sape2_kernel`. Defaults to None.

    Returns:
        Tensor: ``(..., P + H*W, dv)`` in the common dtype of the inputs (all
        inputs must share one floating dtype and device).
    """
    num_tokens = num_prefix + height * width
    if q.shape[-2] != num_tokens or x_vectors.shape[-2:] != (height * width, width) \
            or y_vectors.shape[-2:] != (height * width, height):
        raise ValueError(
            f'lookup_block_attention: q has {q.shape[-2]} tokens, x_vectors '
            f'{tuple(x_vectors.shape)} and y_vectors {tuple(y_vectors.shape)}, but a '
            f'{height}x{width} grid with {num_prefix} prefix tokens needs '
            f'{num_tokens} tokens, (..., {height * width}, {width}) and '
            f'(..., {height * width}, {height}).')
    if kernel is None:
        kernel = choose_sape2_kernel(bias='lookup', impl='chunked', device=q.device,
                                     dtype=q.dtype, head_dims=max(q.shape[-1], v.shape[-1]),
                                     num_axes=1).kernel
    elif kernel not in LOOKUP_KERNELS:
        raise ValueError(f'kernel must be one of {LOOKUP_KERNELS} or None, got {kernel!r}.')
    if kernel == 'cpu_lookup':
        tensors = [t.contiguous() for t in (q, k, v, x_vectors, y_vectors)]
        out, _ = sape2_lookup_attention_cpu_forward(*tensors, height, width, num_prefix)
        return out
    query_factors, key_factors = lookup_factors(x_vectors, y_vectors, height, width,
                                                num_prefix)
    return sape2_block_attention(q, k, v, [query_factors], [key_factors], None, root=False,
                                 block_size=block_size, kernel=kernel)


@functools.lru_cache(maxsize=None)
def _compiled_flex_attention() -> Callable:
    """FlexAttention compiled once per process (its fused kernels need compiling);
    grids of other sizes recompile it with dynamic shapes."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention)


def flex_lookup_attention(q: Tensor, k: Tensor, v: Tensor, x_vectors: Tensor,
                          y_vectors: Tensor, height: int, width: int,
                          num_prefix: int = 0, compile: bool = True) -> Tensor:
    """The attention of :func:`lookup_block_attention` through FlexAttention.

    The ``score_mod`` adds ``s^x[b, h, q, x(kv)] + s^y[b, h, q, y(kv)]`` to each
    score; the vectors get a zero row per prefix query and a zero first column
    that prefix keys point to, so prefix tokens get no bias. Gradients reach
    the vectors through the captured tensors (CUDA). On CPU, PyTorch's
    FlexAttention runs forward only.

    Args:
        q (Tensor): ``(B, heads, P + H*W, d)``.
        k (Tensor): ``(B, heads, P + H*W, d)``.
        v (Tensor): ``(B, heads, P + H*W, dv)``.
        x_vectors (Tensor): ``(B, heads, H*W, W)``.
        y_vectors (Tensor): ``(B, heads, H*W, H)``.
        height (int): H.
        width (int): W.
        num_prefix (int): P. Defaults to 0.
        compile (bool): Run the compiled FlexAttention (fused kernels, no N x N
            tensor); False runs its eager reference, which materialises the
            scores (tests, debugging). Defaults to True.

    Returns:
        Tensor: ``(B, heads, P + H*W, dv)``.
    """
    if q.device.type == 'cpu' and torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k, v, x_vectors, y_vectors)):
        raise ValueError("FlexAttention has no backward on CPU; use impl='chunked' or "
                         "'fused' for training on CPU (impl='auto' picks one), or run "
                         'under torch.no_grad().')
    columns, rows = grid_coordinates(height, width, q.device)
    # Index 0 of each padded table is the zero column of prefix keys.
    key_columns = F.pad(columns + 1, (num_prefix, 0))
    key_rows = F.pad(rows + 1, (num_prefix, 0))
    x_table = F.pad(x_vectors.to(q.dtype), (1, 0, num_prefix, 0))
    y_table = F.pad(y_vectors.to(q.dtype), (1, 0, num_prefix, 0))

    def add_lookup_bias(score, batch, head, query, key):
        return (score + x_table[batch, head, query, key_columns[key]]
                + y_table[batch, head, query, key_rows[key]])

    if compile:
        attend = _compiled_flex_attention()
    else:
        from torch.nn.attention.flex_attention import flex_attention as attend
    return attend(q, k, v, score_mod=add_lookup_bias)


__all__ = ['LOOKUP_KERNELS', 'lookup_block_attention', 'flex_lookup_attention']
