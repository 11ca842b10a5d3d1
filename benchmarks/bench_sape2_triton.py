"""Latency and peak memory of exact SaPE² attention on a GPU: the fused Triton
kernels against PyTorch's flash attention and today's CUDA paths.

For ``--tokens`` patch tokens on a square grid (1024 -> 32x32) plus
``--num-prefix`` class tokens, one attention layer (``--heads`` heads of
``--head-dims``, batch ``--batch``, ``--dtype``), forward and forward+backward:

* ``sdpa``: ``scaled_dot_product_attention`` with the flash backend, no
  position encoding (the reference of every ratio);
* ``triton``: SaPE² by ``sape2_attention_triton`` (fused kernels, O(N) memory);
* ``block``: SaPE² by ``sape2_block_attention(kernel='python')``, the
  pure-PyTorch loop over query blocks that ``impl='chunked'`` ran on CUDA
  before the Triton kernels (and runs where they cannot; float32 q/k/v, as
  the module passed them);
* ``dense``: SaPE² with the (B, heads, N, N) bias materialised (``impl='dense'``)
  and passed to SDPA as its mask.

The SaPE² cases take float32 factors of random centred SaPE-like vectors
(widths W + 2 and H + 2) and backpropagate into q, k, v and the factors; the
computation of the SaPE vectors themselves (the same for every SaPE² case) is
not timed. Each case runs forward+backward once before it is measured, which
includes the Triton autotuning. Latency is the median of ``--repeats`` rounds
over the cases; peak memory the growth of ``torch.cuda.max_memory_allocated``.

Needs a CUDA GPU (compute capability >= 8.0) and Triton; elsewhere it exits
with a message.

Example::

    python benchmarks/bench_sape2_triton.py --tokens 1024 4096 16384 --repeats 10
"""
import argparse
import math
import os
import sys
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

# Runnable from a checkout without installing mmsape.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from benchmarks._measure import (  # noqa: E402
    add_json_option,
    check_tokens_and_reference,
    measure_latency_and_memory,
    ratio_table,
    write_json,
)

METHODS = ('sdpa', 'triton', 'block', 'dense')
METHOD_LABELS = {
    'sdpa': 'plain SDPA, flash backend (no PE)',
    'triton': 'SaPE² exact, fused Triton kernels',
    'block': 'SaPE² exact, PyTorch block kernel (float32)',
    'dense': 'SaPE² exact, dense N x N bias + SDPA',
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tokens', type=int, nargs='+', default=[1024, 4096, 16384],
                        help='patch tokens; each must be a perfect square')
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS),
                        help='plain SDPA is always added: the ratios need it')
    parser.add_argument('--distance', choices=['l2', 'squared'], default='l2',
                        help="SaPE²'s distance: the paper's l2 (two axes, roots) or squared "
                        '(one concatenated axis)')
    parser.add_argument('--repeats', type=int, default=10, help='timed rounds; the median is shown')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--heads', type=int, default=12)
    parser.add_argument('--head-dims', type=int, default=64)
    parser.add_argument('--num-prefix', type=int, default=1, help='class / register tokens')
    parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float16'])
    parser.add_argument('--device', default='cuda', help='a CUDA device')
    parser.add_argument('--block-size', type=int, default=256,
                        help="the block kernel's query block (SaPE2's chunk_size)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    check_tokens_and_reference(parser, args, 'sdpa')
    return args


def check_device(args: argparse.Namespace) -> None:
    """Exit with a message where the kernels cannot be timed."""
    from mmsape.ops.sape2.sape2_attention_triton import triton_unavailable_reason
    device = torch.device(args.device)
    if device.type != 'cuda':
        sys.exit(f'bench_sape2_triton.py times the Triton kernels on a CUDA GPU, not on '
                 f'{args.device!r} (on the CPU they run only through Triton\'s interpreter, '
                 f'whose speed means nothing).')
    reason = triton_unavailable_reason(device)
    if reason is not None:
        sys.exit(f'bench_sape2_triton.py cannot time the Triton kernels here: {reason}.')


def sape_factors(side: int, args: argparse.Namespace) -> Tuple[list, list, torch.Tensor]:
    """Per-axis float32 query and key factors (leaves requiring grad) and floors."""
    from mmsape.ops.sape2 import rounding_floor, squared_distance_factors
    shape = (args.batch, args.heads, side * side, side)
    factors = []
    for _ in range(2):  # x and y
        vectors = torch.randn(shape, device=args.device) * 0.1
        factors.append(squared_distance_factors(vectors - vectors.mean(-2, keepdim=True),
                                                args.num_prefix))
    query_factors, key_factors = [f[0] for f in factors], [f[1] for f in factors]
    if args.distance == 'squared':
        query_factors = [torch.cat(query_factors, -1)]
        key_factors = [torch.cat(key_factors, -1)]
    floors = torch.cat([rounding_floor(f)[..., 0] for f in key_factors], dim=-1)
    leaves = [f.detach().requires_grad_() for f in (*query_factors, *key_factors)]
    half = len(leaves) // 2
    return leaves[:half], leaves[half:], floors


def make_case(method: str, tokens: int,
              args: argparse.Namespace) -> Tuple[Callable[[], None], Callable[[], None]]:
    """Inputs and the closures to measure: forward and forward+backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mmsape.models.pos_encodings.base import attention_with_bias
    from mmsape.ops.sape2 import sape2_block_attention, sape_bias
    from mmsape.ops.sape2.sape2_attention_triton import sape2_attention_triton

    side = math.isqrt(tokens)
    dtype = getattr(torch, args.dtype)
    shape = (args.batch, args.heads, args.num_prefix + tokens, args.head_dims)
    q, k, v = (torch.randn(shape, device=args.device, dtype=dtype).requires_grad_()
               for _ in range(3))
    grad_out = torch.randn(shape, device=args.device, dtype=dtype)
    query_factors, key_factors = [], []
    root = args.distance == 'l2'
    if method != 'sdpa':
        query_factors, key_factors, floors = sape_factors(side, args)
    leaves = [q, k, v, *query_factors, *key_factors]

    def attend() -> torch.Tensor:
        if method == 'sdpa':
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)
        if method == 'triton':
            return sape2_attention_triton(q, k, v, query_factors, key_factors, floors, root)
        if method == 'block':
            # The kernel sape2_block_attention ran on CUDA before the Triton
            # kernels (it picks those now).
            out = sape2_block_attention(q.float(), k.float(), v.float(), query_factors,
                                        key_factors, floors if root else None, root,
                                        block_size=args.block_size, symmetric=True,
                                        kernel='python')
            return out.to(dtype)
        bias = sape_bias(query_factors, key_factors, args.distance)
        return attention_with_bias(q, k, v, bias)

    def forward() -> None:
        with torch.no_grad():
            attend()

    def forward_backward() -> None:
        attend().backward(grad_out)
        for leaf in leaves:
            leaf.grad = None

    # Once before any measurement: the Triton kernels autotune on their first
    # call, with a benchmark buffer of their own that must not count as peak memory.
    forward_backward()
    return forward, forward_backward


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    check_device(args)
    results, memory_note = measure_latency_and_memory(args, argv, __file__, make_case,
                                                      args.methods, interleave=True)
    print(f'SaPE² attention ({args.distance}), {args.heads} heads x {args.head_dims} dims, '
          f'batch {args.batch}, {args.num_prefix} prefix token(s), {args.dtype}; '
          f'{torch.cuda.get_device_name(args.device)}; latency: median of {args.repeats} '
          f'rounds over the methods; peak memory: {memory_note}; torch {torch.__version__}.\n')
    print(ratio_table(results, args.methods, METHOD_LABELS, 'sdpa', 'SDPA flash'))
    write_json(args.json, results)


if __name__ == '__main__':
    main()
