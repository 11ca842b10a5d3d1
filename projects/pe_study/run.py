"""The position-encoding study: one command, CPU, under an hour on two cores.

Trains every position encoding with the same small ViT and budget on digits
(centred and randomly shifted training) and on the study's segmentation set,
tests them at 1x..3x the training size without fine-tuning, on shifted inputs
and for translation equivariance (the parts are described in
:mod:`projects.pe_study.study`). The trainings run as independent jobs on
``--workers`` single-thread processes; then ``docs/pe_study/README.md`` is
written from their JSON results (every number in it comes from this run)::

    python projects/pe_study/run.py --out docs/pe_study

``--quick`` shrinks everything to a smoke test (about a minute); ``--resume``
reuses the results of an interrupted run (same protocol) from ``--work-dir``.
"""
import argparse
import json
import os
import os.path as osp
import shlex
import sys
import time
from typing import List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:  # run as a script from anywhere: the repository is the import root
    sys.path.insert(0, ROOT)

from projects.pe_study.study import report  # noqa: E402
from projects.pe_study.study.digits import TRAINING_PROTOCOLS  # noqa: E402
from projects.pe_study.study.encodings import ROWS as ENCODINGS  # noqa: E402
from projects.pe_study.study.jobs import (  # noqa: E402
    FULL_PROTOCOL,
    QUICK_PROTOCOL,
    StudyProtocol,
    estimate_wall_s,
    plan_jobs,
    run_jobs,
)
from projects.pe_study.study.segmentation import (  # noqa: E402
    SEG_DATA_ROOT,
    SEG_ENCODINGS,
    prepare_seg_data,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train every position encoding on digits and the study\'s segmentation '
        'set, test them at 1x..3x the training size, shifted and for equivariance, and '
        'write a markdown report.')
    parser.add_argument('--out', default='docs/pe_study', help='report folder')
    parser.add_argument('--work-dir', default='work_dirs/pe_study',
                        help='per-job results, checkpoints and runner logs')
    parser.add_argument('--data-root', default=None,
                        help=f'where the segmentation set is generated (default: '
                        f'{SEG_DATA_ROOT}; with --quick: <work-dir>/data)')
    parser.add_argument('--workers', type=int, default=2,
                        help='single-thread worker processes (1: run in this process)')
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help='seeds of both parts (default: the protocol\'s)')
    parser.add_argument('--digits-seeds', type=int, nargs='+', default=None)
    parser.add_argument('--seg-seeds', type=int, nargs='+', default=None)
    parser.add_argument('--epochs', type=int, default=None, help='digits training epochs')
    parser.add_argument('--seg-iters', type=int, default=None,
                        help='segmentation training iterations')
    parser.add_argument('--training', nargs='+', default=None, choices=TRAINING_PROTOCOLS,
                        help='digits training protocols')
    parser.add_argument('--encodings', nargs='+', default=None, choices=list(ENCODINGS),
                        help='encodings of the digits part')
    parser.add_argument('--seg-encodings', nargs='+', default=None, choices=list(ENCODINGS),
                        help='encodings of the segmentation part')
    parser.add_argument('--part', choices=('all', 'digits', 'seg', 'report'), default='all',
                        help="'report' rewrites README.md from the JSON results in --out")
    parser.add_argument('--no-seg', action='store_true', help='skip the segmentation part')
    parser.add_argument('--resume', action='store_true',
                        help='reuse finished jobs of an interrupted run with the same protocol')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 1 seed, 2 encodings, tiny model, few steps')
    args = parser.parse_args(argv)
    args.command = 'python projects/pe_study/run.py ' + shlex.join(
        argv if argv is not None else sys.argv[1:])
    base = QUICK_PROTOCOL if args.quick else FULL_PROTOCOL
    args.protocol = StudyProtocol(
        digits_seeds=tuple(args.digits_seeds or args.seeds or base.digits_seeds),
        seg_seeds=tuple(args.seg_seeds or args.seeds or base.seg_seeds),
        digits_epochs=args.epochs or base.digits_epochs,
        seg_iters=args.seg_iters or base.seg_iters,
        seg_num_train=base.seg_num_train, seg_num_val=base.seg_num_val,
        training_protocols=tuple(args.training or base.training_protocols), quick=args.quick)
    if args.encodings is None:
        args.encodings = ['APE', 'none'] if args.quick else list(ENCODINGS)
    if args.seg_encodings is None:
        args.seg_encodings = ['APE'] if args.quick else list(SEG_ENCODINGS)
    if args.data_root is None:
        args.data_root = (osp.join(args.work_dir, 'data') if args.quick else
                          osp.join(ROOT, SEG_DATA_ROOT))
    # Kept for callers of the former options.
    args.seeds = list(args.protocol.digits_seeds)
    args.epochs, args.seg_iters = args.protocol.digits_epochs, args.protocol.seg_iters
    return args


def run_record(args, wall_s: float, seg_data: Optional[dict] = None) -> dict:
    """What the report says about the run (also saved as ``run.json``)."""
    return dict(command=args.command, wall_s=wall_s, workers=args.workers,
                protocol=args.protocol.as_dict(), machine=report.machine(),
                seg_data=seg_data or {})


def write_report(args, digits: List[dict], seg: List[dict], wall_s: float) -> str:
    """:func:`projects.pe_study.study.report.write_report` for this run's settings."""
    return report.write_report(args.out, digits, seg, run_record(args, wall_s))


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    if args.part == 'report':
        loaded = [_load_json(osp.join(args.out, f'{part}_results.json'), [])
                  for part in ('digits', 'seg')]
        run = _load_json(osp.join(args.out, 'run.json'), None)
        if run is None:
            print(f'{args.out}/run.json is missing: run the study first.', file=sys.stderr)
            return 1
        print(report.write_report(args.out, *loaded, run))
        return 0
    start = time.time()
    with_seg = args.part in ('all', 'seg') and not args.no_seg
    with_digits = args.part in ('all', 'digits')
    jobs = plan_jobs(args.protocol, args.encodings if with_digits else [],
                     args.seg_encodings if with_seg else [])
    paths = dict(root=ROOT, work_dir=osp.abspath(args.work_dir), seg_data='')
    seg_data = {}
    if with_seg:
        folder, seg_data = prepare_seg_data(args.data_root, args.protocol.seg_num_train,
                                            args.protocol.seg_num_val)
        paths['seg_data'] = osp.abspath(folder)
    print(f'{len(jobs)} jobs on {args.workers} worker(s), planned '
          f'{estimate_wall_s(jobs, args.protocol, args.workers) / 60:.0f} min', flush=True)
    results, failures = run_jobs(jobs, args.protocol, paths,
                                 osp.join(args.work_dir, 'results'), args.workers, args.resume,
                                 log=lambda line: print(line, flush=True))
    if failures:
        print('failed jobs (the report is not written; rerun with --resume):\n  ' +
              '\n  '.join(failures), file=sys.stderr)
        return 1
    digits = [r for r in results if 'acc' in r]
    seg = [r for r in results if 'sweep' in r]
    for part, part_results in (('digits', digits), ('seg', seg)):
        with open(osp.join(args.out, f'{part}_results.json'), 'w') as file:
            json.dump(part_results, file, indent=1)
    wall_s = time.time() - start
    run = run_record(args, wall_s, seg_data)
    with open(osp.join(args.out, 'run.json'), 'w') as file:
        json.dump(run, file, indent=1)
    print(report.write_report(args.out, digits, seg, run))
    return 0


def _load_json(path: str, default):
    if not osp.exists(path):
        return default
    with open(path) as file:
        return json.load(file)


if __name__ == '__main__':
    sys.exit(main())
