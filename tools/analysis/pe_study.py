"""The position-encoding study: one command, CPU, well under an hour.

Trains every position encoding with the same small ViT and budget on digits and
on the demo segmentation set, measures resolution transfer and translation
equivariance (the parts are described in :mod:`mmsape.analysis.pe_study`).
Both parts run concurrently, one CPU thread each, then ``docs/pe_study/README.md``
is written from their JSON results (every number in it comes from this run)::

    python tools/analysis/pe_study.py --out docs/pe_study

``--quick`` shrinks everything to a smoke test (about a minute).
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import List

import torch

from mmsape.analysis.encodings import COMPARED_ENCODINGS as ENCODINGS
from mmsape.analysis.pe_study import report
from mmsape.analysis.pe_study.digits import CANVAS, digits_canvases, train_digits
from mmsape.analysis.pe_study.segmentation import SEG_ENCODINGS, train_seg

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def run_digits(args) -> List[dict]:
    torch.set_num_threads(1)
    data = digits_canvases()
    results = []
    for seed in args.seeds:
        for name in args.encodings:
            result = train_digits(name, seed, args.epochs, args.quick, data)
            results.append(result)
            native = result['acc'][f'{CANVAS}x{CANVAS}']
            print(f'[digits] {name:12s} seed {seed}: acc@{CANVAS} {native:.1f} '
                  f'({result["train_s"]:.0f}s)', flush=True)
            _dump(results, osp.join(args.out, 'digits_results.json'))
    return results


def run_seg(args) -> List[dict]:
    torch.set_num_threads(1)
    results = []
    for seed in args.seeds:
        for name in args.seg_encodings:
            result = train_seg(name, seed, args.seg_iters,
                               osp.join(args.work_dir, 'seg'), args.quick, ROOT)
            results.append(result)
            miou = {f'{r["height"]}x{r["width"]}': r['value'] for r in result['sweep']
                    if r['metric'] == 'mIoU'}
            print(f'[seg] {name:12s} seed {seed}: mIoU {miou} ({result["train_s"]:.0f}s)',
                  flush=True)
            _dump(results, osp.join(args.out, 'seg_results.json'))
    return results


def _dump(obj, path: str) -> None:
    with open(path + '.tmp', 'w') as file:
        json.dump(obj, file, indent=1)
    os.replace(path + '.tmp', path)


def write_report(args, digits: List[dict], seg: List[dict], wall_s: float) -> str:
    """:func:`mmsape.analysis.pe_study.report.write_report` for this run's settings."""
    return report.write_report(args.out, digits, seg, command=args.command, seeds=args.seeds,
                               epochs=args.epochs, seg_iters=args.seg_iters,
                               quick=args.quick, wall_s=wall_s)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train every position encoding on digits and the demo segmentation set, '
        'measure resolution transfer and equivariance, write a markdown report.')
    parser.add_argument('--out', default='docs/pe_study', help='report folder')
    parser.add_argument('--work-dir', default='work_dirs/pe_study',
                        help='checkpoints and runner logs of the segmentation part')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=6, help='digits training epochs')
    parser.add_argument('--seg-iters', type=int, default=150,
                        help='segmentation training iterations')
    parser.add_argument('--encodings', nargs='+', default=list(ENCODINGS),
                        choices=list(ENCODINGS), help='encodings of the digits part')
    parser.add_argument('--seg-encodings', nargs='+', default=list(SEG_ENCODINGS),
                        choices=list(ENCODINGS), help='encodings of the segmentation part')
    parser.add_argument('--part', choices=('all', 'digits', 'seg', 'report'), default='all',
                        help="'all' runs digits and seg in parallel (one thread each); "
                        "'report' rewrites README.md from the JSON results in --out, "
                        "keeping the command and wall time recorded there")
    parser.add_argument('--no-seg', action='store_true', help='skip the segmentation part')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 1 seed, 2 encodings, tiny model, few steps')
    args = parser.parse_args(argv)
    args.command = 'python tools/analysis/pe_study.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.seeds = args.seeds[:1]
        args.epochs = 1
        args.seg_iters = 2
        if args.encodings == list(ENCODINGS):
            args.encodings = ['APE', 'none']
        if args.seg_encodings == list(SEG_ENCODINGS):
            args.seg_encodings = ['APE']
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    if args.part == 'digits':
        run_digits(args)
        return 0
    if args.part == 'seg':
        run_seg(args)
        return 0
    if args.part == 'report':
        loaded = []
        for part in ('digits', 'seg'):
            path = osp.join(args.out, f'{part}_results.json')
            loaded.append(json.load(open(path)) if osp.exists(path) else [])
        wall_s = float('nan')
        readme = osp.join(args.out, 'README.md')
        if osp.exists(readme):
            # Keep the run's own command and wall time: only the text is regenerated.
            text = open(readme).read()
            command = re.search(r'```bash\n(.*?)\n```', text)
            wall = re.search(r'- wall time: ([0-9.]+) min', text)
            args.command = command.group(1) if command else args.command
            wall_s = 60 * float(wall.group(1)) if wall else wall_s
        print(write_report(args, *loaded, wall_s=wall_s))
        return 0
    start = time.time()
    seg_proc = None
    if not args.no_seg:
        # The segmentation part in a child process so the two run in parallel.
        child = [sys.executable, osp.abspath(__file__), '--part', 'seg', '--out', args.out,
                 '--work-dir', args.work_dir, '--seg-iters', str(args.seg_iters),
                 '--seeds', *map(str, args.seeds), '--seg-encodings', *args.seg_encodings]
        if args.quick:
            child.append('--quick')
        seg_log = open(osp.join(args.work_dir, 'seg_part.log'), 'w')
        seg_proc = subprocess.Popen(child, stdout=seg_log, stderr=subprocess.STDOUT)
    digits = run_digits(args)
    seg = []
    if seg_proc is not None:
        if seg_proc.wait() != 0:
            print(f'segmentation part failed; see {args.work_dir}/seg_part.log',
                  file=sys.stderr)
            return 1
        with open(osp.join(args.out, 'seg_results.json')) as file:
            seg = json.load(file)
    print(write_report(args, digits, seg, time.time() - start))
    return 0


if __name__ == '__main__':
    sys.exit(main())
