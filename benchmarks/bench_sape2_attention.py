"""Latency and peak memory of one ViT-S attention layer with SaPE² implementations
and the other attention-level encodings.

Compares, for ``--tokens`` patch tokens on a square grid (196 -> 14x14) plus
``--num-prefix`` class tokens, one layer of ViT-S attention (embed 384, 6 heads,
head dim 64, batch 1) computed by:

* ``sdpa``: plain ``scaled_dot_product_attention``, no position encoding;
* ``dense``: SaPE² as in the paper, with a materialised (B, heads, N, N) bias;
* ``chunked``: mmsape's exact, memory-lean SaPE² through a compiled kernel
  (tiles, recomputed in backward) where one runs: the CPU kernel (float32 on
  CPU), the fused Triton kernels (CUDA);
* ``chunked_python``: the same through the pure-PyTorch block kernel (what
  other devices and dtypes run, and CUDA without Triton);
* ``squared_chunked``: SaPE² with the squared distance (a different model)
  through the compiled kernel;
* ``fused``: the squared-distance model by plain fused attention on augmented
  q and k (what ``impl='auto'`` picks for it off the compiled kernel);
* ``query_distance``: query-relative SaPE² (``count_from='query'``) with the
  published distance bias, through the compiled kernel;
* ``lookup``: query-relative SaPE² with the lookup bias (``bias='lookup'``)
  through its compiled CPU kernel (``impl='auto'`` on CPU);
* ``lookup_python``: the same through the pure-PyTorch block kernel;
* ``lookup_fused``: the same by plain fused attention on q and k augmented with
  ``[s^x, s^y]`` and one-hot columns and rows (head dim + W + H);
* ``lookup_flex``: the same through FlexAttention (``impl='flex'``; CUDA only,
  as FlexAttention has no backward on CPU);
* ``rope``: 2D RoPE (mixed), rotations of q and k, then SDPA;
* ``peg``: SDPA plus PEG's depthwise 3x3 convolution over the layer's tokens
  (PEG acts between blocks; this is its per-layer cost);
* ``pape``: PaPE (50 parabolas per head, the authors' default) by SDPA on q and
  k augmented with 3 * 50 + 2 columns (head width 64 -> 216), float32;
* ``pape_ri``: PaPE-RI (one parabola per head over fixed scales), the same
  with 5 columns (64 -> 72).

The SaPE vectors (gates, positions, table reads) are part of every SaPE² case,
PaPE's curvature / slope projection of the layer's tokens and its augmented
columns of every PaPE case; the q/k/v projections are not (they are the same
for all). Forward is timed
under ``torch.no_grad()`` (inference); forward+backward backpropagates into q,
k, v and the tables. Each is run once before it is timed.

Peak memory is the growth over the memory held just before the call, after a
warm-up forward; on CPU it is the resident high-water mark, measured in a child
process whose allocator returns large blocks at once. Details in
``benchmarks/_measure.py``.

Example::

    python benchmarks/bench_sape2_attention.py --tokens 196 1024 --repeats 3
"""
import argparse
import contextlib
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch

# Runnable from a checkout without installing mmsape.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from benchmarks._measure import (  # noqa: E402
    add_json_option,
    check_tokens_and_reference,
    measure_latency_and_memory,
    print_memory_for_parent,
    ratio_table,
    write_json,
)

METHODS = ('sdpa', 'dense', 'chunked', 'chunked_python', 'squared_chunked', 'fused',
           'query_distance', 'lookup', 'lookup_python', 'lookup_fused', 'lookup_flex', 'rope',
           'peg', 'pape', 'pape_ri')
METHOD_LABELS = {
    'sdpa': 'plain SDPA (no PE)',
    'dense': 'SaPE² exact, dense (paper-style)',
    'chunked': 'SaPE² exact, chunked (compiled kernel: CPU / Triton)',
    'chunked_python': 'SaPE² exact, chunked (Python kernel)',
    'squared_chunked': 'SaPE² squared, chunked (compiled kernel: CPU / Triton)',
    'fused': 'SaPE² squared, fused (SDPA on augmented q/k)',
    'query_distance': 'query-relative SaPE², distance, chunked (compiled kernel)',
    'lookup': 'query-relative SaPE², lookup, chunked (compiled kernel)',
    'lookup_python': 'query-relative SaPE², lookup, chunked (Python kernel)',
    'lookup_fused': 'query-relative SaPE², lookup, fused (SDPA on augmented q/k)',
    'lookup_flex': 'query-relative SaPE², lookup, FlexAttention',
    'rope': '2D RoPE mixed',
    'peg': 'PEG (SDPA + its 3x3 depthwise conv)',
    'pape': 'PaPE, 50 parabolas (SDPA on augmented q/k)',
    'pape_ri': 'PaPE-RI (SDPA on augmented q/k)',
}
#: method -> PaPE options.
PAPE_OPTIONS = {'pape': dict(), 'pape_ri': dict(rotation_invariant=True)}
#: method -> SaPE2 options.
SAPE2_OPTIONS = {
    'dense': dict(impl='dense'),
    'chunked': dict(impl='chunked'),
    'chunked_python': dict(impl='chunked'),
    'squared_chunked': dict(impl='chunked', distance='squared'),
    'fused': dict(impl='fused', distance='squared'),
    'query_distance': dict(impl='chunked', count_from='query'),
    'lookup': dict(impl='chunked', count_from='query', bias='lookup'),
    'lookup_python': dict(impl='chunked', count_from='query', bias='lookup'),
    'lookup_fused': dict(impl='fused', count_from='query', bias='lookup'),
    'lookup_flex': dict(impl='flex', count_from='query', bias='lookup'),
}
#: Methods that run through the Python kernel instead of the compiled one.
PYTHON_KERNEL = ('chunked_python', 'lookup_python')
EMBED_DIMS, NUM_HEADS = 384, 6
Results = Dict[int, Dict[str, Dict[str, float]]]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tokens', type=int, nargs='+', default=[196, 1024, 2304, 4096],
                        help='patch tokens; each must be a perfect square')
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS),
                        help='plain SDPA is always added: the ratios need it')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs; the median is shown')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
    parser.add_argument('--num-prefix', type=int, default=1, help='class / register tokens')
    parser.add_argument('--chunk-size', type=int, default=256)
    parser.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args(argv)
    check_tokens_and_reference(parser, args, 'sdpa')
    return args


@contextlib.contextmanager
def python_kernel_only(enabled: bool):
    """Run the exact SaPE² through its Python kernel instead of a compiled one
    (the CPU kernel, or the Triton kernels on CUDA)."""
    from mmsape.ops.sape2 import CPU_KERNEL_ENV, TRITON_ENV
    previous = {name: os.environ.get(name) for name in (CPU_KERNEL_ENV, TRITON_ENV)}
    if enabled:
        os.environ.update(dict.fromkeys(previous, '0'))
    try:
        yield
    finally:
        if enabled:
            for name, value in previous.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value


def make_case(method: str, tokens: int,
              args: argparse.Namespace) -> Tuple[Callable[[], None], Callable[[], None]]:
    """Inputs and the two closures to measure: forward and forward+backward."""
    from mmsape.models.pos_encodings import PEG, PaPE, RoPE2D, SaPE2
    from mmsape.models.pos_encodings.base import TokenGrid

    side = math.isqrt(tokens)
    grid = TokenGrid(side, side, num_prefix=args.num_prefix)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = (1, NUM_HEADS, grid.num_tokens, EMBED_DIMS // NUM_HEADS)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_()
               for _ in range(3))
    grad_out = torch.randn(shape, device=device, dtype=dtype)
    module = None
    if method in SAPE2_OPTIONS:
        module = SaPE2(embed_dims=EMBED_DIMS, num_heads=NUM_HEADS, num_layers=1,
                       chunk_size=args.chunk_size, **SAPE2_OPTIONS[method]).to(device)
    elif method == 'rope':
        module = RoPE2D(embed_dims=EMBED_DIMS, num_heads=NUM_HEADS, num_layers=1,
                        mode='mixed').to(device)
    elif method == 'peg':
        # In the tokens' dtype: a convolution takes no mixed dtypes.
        module = PEG(embed_dims=EMBED_DIMS, num_heads=NUM_HEADS, num_layers=1).to(device, dtype)
    elif method in PAPE_OPTIONS:
        module = PaPE(embed_dims=EMBED_DIMS, num_heads=NUM_HEADS, num_layers=1,
                      **PAPE_OPTIONS[method]).to(device)
    # PEG works on the block's (B, N, C) tokens; PaPE reads them inside attention.
    tokens_in = torch.randn(1, grid.num_tokens, EMBED_DIMS, device=device,
                            dtype=dtype).requires_grad_()

    def attend():
        if method == 'sdpa':
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        if method == 'peg':
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            encoded = module.after_block(0, tokens_in, grid)  # (1, N, C): split into heads
            return out + encoded.unflatten(-1, (NUM_HEADS, -1)).transpose(1, 2)
        with python_kernel_only(method in PYTHON_KERNEL):
            return module.attention(0, q, k, v, grid, tokens=tokens_in)

    def forward():
        with torch.no_grad():
            attend()

    def forward_backward():
        attend().backward(grad_out)
        for tensor in (q, k, v, tokens_in):
            tensor.grad = None
        if module is not None:
            module.zero_grad(set_to_none=True)

    return forward, forward_backward


def skipped(method: str, tokens: int, args: argparse.Namespace) -> bool:
    # FlexAttention has no backward on CPU (PyTorch).
    return method == 'lookup_flex' and not args.device.startswith('cuda')


def format_table(results: Results, methods: List[str]) -> str:
    return ratio_table(results, methods, METHOD_LABELS, 'sdpa', 'SDPA',
                       skip_reason='CUDA only')


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print_memory_for_parent(make_case, args, args.methods, skipped)
        return
    results, memory_note = measure_latency_and_memory(
        args, argv, __file__, make_case, args.methods, interleave=True, skip=skipped)
    print(f'ViT-S attention layer (embed {EMBED_DIMS}, {NUM_HEADS} heads, batch 1, '
          f'{args.num_prefix} prefix token(s)); device {args.device}, {args.dtype}, '
          f'{args.threads} thread(s), chunk_size {args.chunk_size}; latency: median of '
          f'{args.repeats} rounds over the methods; peak memory: {memory_note}; '
          f'torch {torch.__version__}.\n')
    print(format_table(results, args.methods))
    write_json(args.json, results)


if __name__ == '__main__':
    main()
