"""Latency and peak memory of one ViT-S attention layer with SaPE² implementations.

Compares, for ``--tokens`` patch tokens on a square grid (196 -> 14x14) plus
``--num-prefix`` class tokens, one layer of ViT-S attention (embed 384, 6 heads,
head dim 64, batch 1) computed by:

* ``sdpa``: plain ``scaled_dot_product_attention``, no position encoding;
* ``dense``: SaPE² as in the paper, with a materialised (B, heads, N, N) bias;
* ``chunked``: mmsape's exact, memory-lean SaPE² (query blocks, recomputed in
  backward);
* ``fused``: SaPE² with the squared distance (a different model) computed by
  plain fused attention on augmented q and k.

The SaPE vectors (gates, positions, table reads) are part of every SaPE² case;
the q/k/v projections are not (they are the same for all). Forward is timed
under ``torch.no_grad()`` (inference); forward+backward backpropagates into q,
k, v and the tables. Each is run once before it is timed.

Peak memory is the growth over the memory held just before the call (inputs
included in that baseline), after a warm-up forward:

* CUDA: ``torch.cuda.max_memory_allocated()``, i.e. tensors only.
* CPU: the resident-set high-water mark ``VmHWM`` of ``/proc/self/status``,
  reset before each measurement by writing 5 to ``/proc/self/clear_refs``
  (Linux). By default glibc keeps freed large blocks for reuse, and the resident
  set then depends on the history of the process rather than on the live
  tensors; so the memory is measured in a child process started with
  ``MALLOC_MMAP_THRESHOLD_=131072``, where every block over 128 KiB is its own
  mapping, returned to the system when freed. Latency is measured in the main
  process, with the default allocator.

Example::

    python benchmarks/bench_sape2_attention.py --tokens 196 1024 --repeats 3
"""
import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

# Runnable from a checkout without installing mmsape.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

METHODS = ('sdpa', 'dense', 'chunked', 'fused')
METHOD_LABELS = {
    'sdpa': 'plain SDPA (no PE)',
    'dense': 'SaPE² dense (paper-style)',
    'chunked': 'SaPE² chunked (mmsape)',
    'fused': 'SaPE² fused (squared distance)',
}
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
    args = parser.parse_args(argv)
    for tokens in args.tokens:
        if math.isqrt(tokens)**2 != tokens:
            parser.error(f'--tokens {tokens} is not a perfect square')
    if 'sdpa' not in args.methods:
        args.methods = ['sdpa'] + args.methods
    return args


def make_case(method: str, tokens: int,
              args: argparse.Namespace) -> Tuple[Callable[[], None], Callable[[], None]]:
    """Inputs and the two closures to measure: forward and forward+backward."""
    from mmsape.models.pos_encodings.base import TokenGrid
    from mmsape.models.pos_encodings.sape2 import SaPE2

    side = math.isqrt(tokens)
    grid = TokenGrid(side, side, num_prefix=args.num_prefix)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = (1, NUM_HEADS, grid.num_tokens, EMBED_DIMS // NUM_HEADS)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_()
               for _ in range(3))
    grad_out = torch.randn(shape, device=device, dtype=dtype)
    if method == 'sdpa':
        module = None

        def attend():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    else:
        module = SaPE2(embed_dims=EMBED_DIMS, num_heads=NUM_HEADS, num_layers=1,
                       distance='squared' if method == 'fused' else 'l2', impl=method,
                       chunk_size=args.chunk_size).to(device)

        def attend():
            return module.attention(0, q, k, v, grid)

    def forward():
        with torch.no_grad():
            attend()

    def forward_backward():
        attend().backward(grad_out)
        for tensor in (q, k, v):
            tensor.grad = None
        if module is not None:
            module.zero_grad(set_to_none=True)

    return forward, forward_backward


def _proc_status_bytes(field: str) -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f'{field} missing from /proc/self/status')


def _reset_resident_high_water_mark() -> None:
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')  # VmHWM := VmRSS


def check_cpu_memory_measurement() -> None:
    try:
        _reset_resident_high_water_mark()
        _proc_status_bytes('VmHWM')
    except (OSError, RuntimeError):
        sys.exit('CPU peak memory needs a writable /proc/self/clear_refs (Linux >= 4.0).')


def peak_mib(fn: Callable[[], None], device: str) -> float:
    """Peak memory growth, in MiB, while ``fn`` runs; see the module docstring."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - baseline) / 2**20
    gc.collect()
    _reset_resident_high_water_mark()
    baseline = _proc_status_bytes('VmRSS')
    fn()
    return (_proc_status_bytes('VmHWM') - baseline) / 2**20


def median_ms(fn: Callable[[], None], repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure_memory(method: str, tokens: int, args: argparse.Namespace) -> Dict[str, float]:
    torch.manual_seed(0)
    forward, forward_backward = make_case(method, tokens, args)
    forward()  # warm-up: one-time initialisation is not the method's cost
    return {'fwd_mib': peak_mib(forward, args.device),
            'fwdbwd_mib': peak_mib(forward_backward, args.device)}


def measure_latency(method: str, tokens: int, args: argparse.Namespace) -> Dict[str, float]:
    torch.manual_seed(0)
    forward, forward_backward = make_case(method, tokens, args)
    forward()
    forward_backward()
    return {'fwd_ms': median_ms(forward, args.repeats, args.device),
            'fwdbwd_ms': median_ms(forward_backward, args.repeats, args.device)}


def measure_all(measure: Callable[[str, int, argparse.Namespace], Dict[str, float]],
                args: argparse.Namespace, what: str) -> Results:
    results: Results = {}
    for tokens in args.tokens:
        results[tokens] = {}
        for method in args.methods:
            start = time.perf_counter()
            try:
                results[tokens][method] = measure(method, tokens, args)
            except RuntimeError as error:  # e.g. out of memory: report it, go on
                print(f'{method} @ {tokens} tokens failed: {error}', file=sys.stderr)
                results[tokens][method] = {}
            if args.device.startswith('cuda'):
                torch.cuda.empty_cache()
            print(f'{what} of {method} @ {tokens} tokens: {time.perf_counter() - start:.1f} s',
                  file=sys.stderr, flush=True)
    return results


def measure_cpu_memory_in_child(argv: List[str]) -> Results:
    """Run the memory measurements in a process whose malloc never pools large blocks."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 2**10))
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, '--memory-child'],
                          env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f'the memory measurement process failed (exit code {done.returncode})')
    return {int(tokens): per_method
            for tokens, per_method in json.loads(done.stdout.splitlines()[-1]).items()}


def format_table(results: Results, methods: List[str]) -> str:
    def cells(value, reference, smallest_reference):
        if value is None:
            return ['failed', '']
        # A ratio to a reference at the noise level (under 1 MiB) means nothing.
        ratio = (f'{value / reference:.2f}x'
                 if reference is not None and reference >= smallest_reference else 'n/a')
        return [f'{value:.1f}', ratio]

    lines = ['| tokens (grid) | method | fwd ms | vs SDPA | fwd+bwd ms | vs SDPA | '
             'fwd peak MiB | vs SDPA | fwd+bwd peak MiB | vs SDPA |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for tokens, per_method in results.items():
        side = math.isqrt(tokens)
        plain = per_method.get('sdpa', {})
        for method in methods:
            row = per_method.get(method, {})
            columns = []
            for key in ('fwd_ms', 'fwdbwd_ms', 'fwd_mib', 'fwdbwd_mib'):
                smallest = 1. if key.endswith('mib') else 1e-3
                columns += cells(row.get(key), plain.get(key), smallest)
            lines.append(f'| {tokens} ({side}x{side}) | {METHOD_LABELS[method]} | '
                         + ' | '.join(columns) + ' |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(measure_all(measure_memory, args, 'memory')))
        return
    on_cuda = args.device.startswith('cuda')
    if on_cuda and not torch.cuda.is_available():
        sys.exit('--device cuda was asked for, but CUDA is not available')
    if on_cuda:
        memory = measure_all(measure_memory, args, 'memory')
    else:
        check_cpu_memory_measurement()
        memory = measure_cpu_memory_in_child(argv)
    results = measure_all(measure_latency, args, 'latency')
    for tokens, per_method in results.items():
        for method, row in per_method.items():
            row.update(memory.get(tokens, {}).get(method, {}))
    memory_note = ('CUDA max_memory_allocated growth' if on_cuda else
                   'growth of the resident high-water mark (VmHWM), large blocks unpooled')
    print(f'ViT-S attention layer (embed {EMBED_DIMS}, {NUM_HEADS} heads, batch 1, '
          f'{args.num_prefix} prefix token(s)); device {args.device}, {args.dtype}, '
          f'{args.threads} thread(s), chunk_size {args.chunk_size}; latency: median of '
          f'{args.repeats}; peak memory: {memory_note}; torch {torch.__version__}.\n')
    print(format_table(results, args.methods))


if __name__ == '__main__':
    main()
