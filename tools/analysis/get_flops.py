"""Params, FLOPs and CPU latency of PosEncViT per position encoding.

FLOPs come from MMEngine's analyzer (``mmengine.analysis.FlopAnalyzer``, the
counter behind ``get_model_complexity_info``; one multiply-add = 1 FLOP, as in
fvcore/mmengine). MMEngine has no handle for ``aten::scaled_dot_product_attention``,
so without help the attention matmuls of every encoding would be missing; this
tool registers one (``B*heads*N*M*(d + d_v)``). Ops still without a handle
(SaPE² / CoPE gates, cumulative sums, sqrt, RoPE's elementwise rotation) are
listed in the "uncounted ops" column rather than silently ignored.

The encodings are the files of ``configs/_base_/pos_encodings/`` (by file name;
the default is all of them). Example::

    python tools/analysis/get_flops.py --arch deit-tiny --shape 224 224 --patch-size 16
    python tools/analysis/get_flops.py --encodings ape peg sape2 sape2_qrel_lookup
"""
import argparse
import glob
import os.path as osp
import sys
import time
from collections import Counter
from typing import Any, List

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config

from mmsape.models import PosEncViT

#: The encodings users put in their configs, one file each.
ENCODINGS_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                         'configs', '_base_', 'pos_encodings')
ENCODINGS = sorted(osp.splitext(osp.basename(path))[0]
                   for path in glob.glob(osp.join(ENCODINGS_DIR, '*.py')))


def read_pos_encoding(name: str):
    """``pos_encoding`` of ``configs/_base_/pos_encodings/<name>.py``."""
    return Config.fromfile(osp.join(ENCODINGS_DIR, f'{name}.py')).to_dict()['pos_encoding']


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """FLOPs of ``scaled_dot_product_attention``: q.k^T and attn.v."""
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    batch = 1
    for dim in q_shape[:-2]:
        batch *= dim
    num_q, dims = q_shape[-2:]
    num_k, dims_v = k_shape[-2], v_shape[-1]
    return batch * num_q * num_k * (dims + dims_v)


def count(name: str, arch: str, shape, patch_size: int) -> dict:
    """Build one model; count its parameters and FLOPs."""
    model = PosEncViT(arch=arch, img_size=tuple(shape), patch_size=patch_size,
                      pos_encoding=read_pos_encoding(name)).eval()
    inputs = torch.randn(1, 3, *shape)
    analyzer = FlopAnalyzer(model, (inputs, ))
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    flops = analyzer.total()
    # Ops that appear in the trace but have no handle: reported, not guessed.
    uncounted = Counter(analyzer.unsupported_ops())
    return dict(name=name, model=model, inputs=inputs, params=parameter_count(model)[''],
                flops=flops, times=[],
                uncounted=', '.join(sorted(op.replace('aten::', '') for op in uncounted)))


@torch.no_grad()
def time_round_robin(rows: List[dict], repeats: int) -> None:
    """Time one forward of every model per round, ``repeats`` rounds.

    Round-robin rather than model after model: on a shared CPU a burst of
    someone else's load then slows one round of every model instead of all runs
    of one model; the fastest run per model is kept.
    """
    for row in rows:  # warm-up: one-off kernel selection and allocations
        row['model'](row['inputs'])
    for _ in range(repeats):
        for row in rows:
            start = time.perf_counter()
            row['model'](row['inputs'])
            row['times'].append(time.perf_counter() - start)
    for row in rows:
        row['latency_ms'] = 1e3 * min(row['times'])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Params, FLOPs and CPU latency of PosEncViT for each position encoding.')
    parser.add_argument('--arch', default='deit-tiny',
                        help='a name of PosEncViT.arch_zoo (deit-tiny, deit-small, deit-base, ...)')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'), help='input size')
    parser.add_argument('--patch-size', type=int, default=16, help='patch size')
    parser.add_argument('--encodings', nargs='+', default=ENCODINGS, choices=ENCODINGS,
                        help='files of configs/_base_/pos_encodings/ to measure')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed rounds over all models (the fastest run is reported), batch 1')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [count(n, args.arch, args.shape, args.patch_size) for n in args.encodings]
    time_round_robin(rows, args.repeats)
    print(f'arch {args.arch}, input {args.shape[0]}x{args.shape[1]}, patch {args.patch_size}, '
          f'batch 1, {args.threads} CPU thread(s), best of {args.repeats} runs\n')
    print('| encoding | params (M) | GFLOPs | CPU latency (ms) | uncounted ops |')
    print('|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["name"]} | {r["params"] / 1e6:.3f} | {r["flops"] / 1e9:.3f} | '
              f'{r["latency_ms"]:.1f} | {r["uncounted"] or "-"} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
