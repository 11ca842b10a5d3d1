"""Latency and peak-memory helpers shared by the benchmark scripts.

Peak memory is the growth over the memory held just before the call (inputs
included in that baseline):

* CUDA: ``torch.cuda.max_memory_allocated()``, i.e. tensors only.
* CPU: the resident-set high-water mark ``VmHWM`` of ``/proc/self/status``,
  reset before each measurement by writing 5 to ``/proc/self/clear_refs``
  (Linux). By default glibc keeps freed large blocks for reuse, and the resident
  set then depends on the history of the process rather than on the live
  tensors; so memory is measured in a child process started with
  ``MALLOC_MMAP_THRESHOLD_=131072`` (:func:`run_memory_child`), where every
  block over 128 KiB is its own mapping, returned to the system when freed.
  Latency is measured in the main process, with the default allocator.

Latency is the median of ``repeats`` timed calls, each after a CUDA sync on
CUDA. On a shared CPU, absolute times move with the load of the other
processes; ratios between cases measured in the same run are more stable.
"""
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

#: Child processes measure memory with every block over this many bytes
#: allocated as its own mapping (see the module docstring).
MMAP_THRESHOLD_BYTES = 128 * 2**10


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
    """Exit with a message where the CPU peak memory cannot be measured."""
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
    """Median wall time of ``repeats`` calls of ``fn``, in milliseconds."""
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure_memory(make_case: Callable, case: str, tokens: int, args) -> Dict[str, float]:
    """Peak memory of ``make_case(case, tokens, args)``'s forward and forward+backward."""
    torch.manual_seed(0)
    forward, forward_backward = make_case(case, tokens, args)
    forward()  # warm-up: one-time initialisation is not the case's cost
    return {'fwd_mib': peak_mib(forward, args.device),
            'fwdbwd_mib': peak_mib(forward_backward, args.device)}


def measure_latency(make_case: Callable, case: str, tokens: int, args) -> Dict[str, float]:
    """Median latency of ``make_case(case, tokens, args)``'s forward and forward+backward."""
    torch.manual_seed(0)
    forward, forward_backward = make_case(case, tokens, args)
    forward()
    forward_backward()
    return {'fwd_ms': median_ms(forward, args.repeats, args.device),
            'fwdbwd_ms': median_ms(forward_backward, args.repeats, args.device)}


def interleaved_latency(make_case: Callable, cases: Sequence[str], tokens: int,
                        args) -> Dict[str, Dict[str, float]]:
    """Median latency of every case's forward and forward+backward, timed in
    rounds that take each case in turn (after one warm-up call of each).

    On a machine shared with other work, the load drifts over minutes; timing
    all repeats of one case before the next would give each case its own load,
    while rounds give every case the same mix, so the ratios stay fair.
    """
    closures = {}
    for case in cases:
        torch.manual_seed(0)
        try:
            forward, forward_backward = make_case(case, tokens, args)
            forward()
            forward_backward()
        except RuntimeError as error:  # e.g. out of memory: report it, go on
            print(f'{case} @ {tokens} tokens failed: {error}', file=sys.stderr)
            continue
        closures[case] = (forward, forward_backward)
    times: Dict[str, Dict[str, List[float]]] = {
        case: {'fwd_ms': [], 'fwdbwd_ms': []} for case in closures}
    for _ in range(args.repeats):
        for case, (forward, forward_backward) in closures.items():
            times[case]['fwd_ms'].append(median_ms(forward, 1, args.device))
            times[case]['fwdbwd_ms'].append(median_ms(forward_backward, 1, args.device))
    return {case: {key: statistics.median(values) for key, values in row.items()}
            for case, row in times.items()}


def run_memory_child(script: str, argv: List[str], child_flag: str = '--memory-child'):
    """Run ``script argv child_flag`` with large blocks unpooled; return the JSON
    object that the child prints on its last line of stdout."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD_BYTES))
    done = subprocess.run([sys.executable, os.path.abspath(script), *argv, child_flag],
                          env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f'the memory measurement process failed (exit code {done.returncode})')
    return json.loads(done.stdout.splitlines()[-1])


def ratio_cells(value: Optional[float], reference: Optional[float],
                smallest_reference: float) -> List[str]:
    """``[value, ratio to reference]`` table cells; a ratio to a reference below
    ``smallest_reference`` (noise level) is shown as ``n/a``."""
    if value is None:
        return ['failed', '']
    ratio = (f'{value / reference:.2f}x'
             if reference is not None and reference >= smallest_reference else 'n/a')
    return [f'{value:.1f}', ratio]


__all__ = ['check_cpu_memory_measurement', 'peak_mib', 'median_ms', 'run_memory_child',
           'ratio_cells', 'MMAP_THRESHOLD_BYTES', 'measure_memory', 'measure_latency',
           'ratio_row', 'ratio_table', 'check_tokens_and_reference',
           'measure_latency_and_memory', 'interleaved_latency', 'measure_all',
           'print_memory_for_parent', 'SKIPPED', 'add_json_option', 'write_json']


def ratio_row(row: dict, reference: dict) -> List[str]:
    """The latency and memory cells of one table row, each with its ratio to ``reference``."""
    cells = []
    for key in ('fwd_ms', 'fwdbwd_ms', 'fwd_mib', 'fwdbwd_mib'):
        # A ratio to a reference at the noise level (under 1 MiB) means nothing.
        smallest = 1. if key.endswith('mib') else 1e-3
        cells += ratio_cells(row.get(key), reference.get(key), smallest)
    return cells


def check_tokens_and_reference(parser, args, reference: str) -> None:
    """Argument checks of the attention benchmarks: ``args.tokens`` must be
    perfect squares (square grids), and ``reference`` joins ``args.methods``."""
    for tokens in args.tokens:
        if math.isqrt(tokens)**2 != tokens:
            parser.error(f'--tokens {tokens} is not a perfect square')
    if reference not in args.methods:
        args.methods = [reference] + args.methods


def ratio_table(results: Dict[int, dict], cases: Sequence[str], labels: Dict[str, str],
                reference: str, reference_name: str, skip_reason: str = '') -> str:
    """Markdown table of :func:`ratio_row` per token count (a square grid) and case,
    the ratios to the ``reference`` case of the same token count; the rows of
    skipped cases say so (with ``skip_reason``)."""
    versus = f'vs {reference_name}'
    lines = [f'| tokens (grid) | method | fwd ms | {versus} | fwd+bwd ms | {versus} | '
             f'fwd peak MiB | {versus} | fwd+bwd peak MiB | {versus} |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for tokens, per_case in results.items():
        side = math.isqrt(tokens)
        for case in cases:
            row = per_case.get(case, {})
            if SKIPPED in row:
                cells = [f'skipped ({skip_reason})' if skip_reason else 'skipped', ''] + [''] * 6
            else:
                cells = ratio_row(row, per_case.get(reference, {}))
            lines.append(f'| {tokens} ({side}x{side}) | {labels[case]} | ' + ' | '.join(cells)
                         + ' |')
    return '\n'.join(lines)


def add_json_option(parser) -> None:
    """``--json PATH``: the benchmarks also write their results for other programs
    (``benchmarks/gpu_check.sh`` computes the targets' ratios from them)."""
    parser.add_argument('--json', metavar='PATH',
                        help='also write the results there: {tokens: {case: {fwd_ms, '
                        'fwdbwd_ms, fwd_mib, fwdbwd_mib}}}')


def write_json(path: Optional[str], results: Dict[int, dict]) -> None:
    """Write ``results`` to ``path`` (nothing when ``path`` is None)."""
    if path is not None:
        with open(path, 'w') as file:
            json.dump({str(tokens): per_case for tokens, per_case in results.items()}, file,
                      indent=1)


#: Row of a case that ``skip`` left out.
SKIPPED = 'skipped'
#: ``skip(case, tokens, args)``: whether a case is left out at a token count.
Skip = Optional[Callable[[str, int, object], bool]]


def measure_all(measure: Callable[[str, int, object], Dict[str, float]], args,
                cases: Sequence[str], what: str, skip: Skip = None) -> Dict[int, dict]:
    """``{tokens: {case: measure(case, tokens, args)}}`` over ``args.tokens`` and
    ``cases``; a case that fails (e.g. out of memory) is reported and gets an
    empty row, a skipped one ``{SKIPPED: 1.}``."""
    results: Dict[int, dict] = {}
    for tokens in args.tokens:
        results[tokens] = {}
        for case in cases:
            if skip is not None and skip(case, tokens, args):
                results[tokens][case] = {SKIPPED: 1.}
                continue
            start = time.perf_counter()
            try:
                results[tokens][case] = measure(case, tokens, args)
            except RuntimeError as error:  # e.g. out of memory: report it, go on
                print(f'{case} @ {tokens} tokens failed: {error}', file=sys.stderr)
                results[tokens][case] = {}
            if args.device.startswith('cuda'):
                torch.cuda.empty_cache()
            print(f'{what} of {case} @ {tokens} tokens: {time.perf_counter() - start:.1f} s',
                  file=sys.stderr, flush=True)
    return results


def print_memory_for_parent(make_case: Callable, args, cases: Sequence[str],
                            skip: Skip = None) -> None:
    """The memory child's job (see :func:`run_memory_child`): measure, print JSON."""
    print(json.dumps(measure_all(partial(measure_memory, make_case), args, cases, 'memory',
                                 skip)))


def measure_latency_and_memory(args, argv: List[str], script: str, make_case: Callable,
                               cases: Sequence[str], interleave: bool = False,
                               skip: Skip = None) -> Tuple[Dict[int, dict], str]:
    """Latency of every case in this process and peak memory (in a child process on
    the CPU, see :func:`check_cpu_memory_measurement`), merged per tokens and case.

    ``make_case(case, tokens, args)`` returns a case's forward and
    forward+backward closures. With ``interleave``, latency is timed in rounds
    over the cases (:func:`interleaved_latency`) instead of case after case.

    Returns:
        tuple: ``{tokens: {case: row}}`` and a note saying what the memory means.
    """
    on_cuda = args.device.startswith('cuda')
    if on_cuda and not torch.cuda.is_available():
        sys.exit('--device cuda was asked for, but CUDA is not available')
    if on_cuda:
        memory = measure_all(partial(measure_memory, make_case), args, cases, 'memory', skip)
    else:
        check_cpu_memory_measurement()
        memory = {int(tokens): per_case
                  for tokens, per_case in run_memory_child(script, argv).items()}
    if not interleave:
        results = measure_all(partial(measure_latency, make_case), args, cases, 'latency', skip)
    else:
        results = {}
        for tokens in args.tokens:
            start = time.perf_counter()
            skipped = [c for c in cases if skip is not None and skip(c, tokens, args)]
            timed = interleaved_latency(
                make_case, [c for c in cases if c not in skipped], tokens, args)
            results[tokens] = {c: timed.get(c, {SKIPPED: 1.} if c in skipped else {})
                               for c in cases}
            print(f'latency @ {tokens} tokens: {time.perf_counter() - start:.1f} s',
                  file=sys.stderr, flush=True)
    for tokens, per_case in results.items():
        for case, row in per_case.items():
            row.update(memory.get(tokens, {}).get(case, {}))
    note = ('CUDA max_memory_allocated growth' if on_cuda else
            'growth of the resident high-water mark (VmHWM), large blocks unpooled')
    return results, note
