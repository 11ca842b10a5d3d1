"""The position-encoding study: one command, CPU, at most 90 minutes on two cores
(the decision rows; the SaPE² design sweep is a second command of the same kind).

Trains every row (:mod:`projects.pe_study.study.encodings`: the baselines, the
published SaPE², mmsape's query-relative forms and the design sweep) as the same
small ViT segmenter on the study's set, paired by seed, and measures it at other
sizes, under translation and on distant twins (:mod:`projects.pe_study.study.segmentation`).
The trainings run as independent jobs on ``--workers`` single-thread processes;
then ``docs/pe_study/README.md`` is written from their JSON results (every number
in it comes from this run)::

    python projects/pe_study/run.py --out docs/pe_study               # decision rows
    python projects/pe_study/run.py --part sweep --out docs/pe_study  # design sweep

Each part keeps the other part's saved results (same protocol) in the report;
``--part all`` runs both in one go; ``--quick``
shrinks everything to a smoke test (about a minute); ``--resume`` reuses the
results of an interrupted run (same protocol) from ``--work-dir``.
"""
import argparse
import json
import os
import os.path as osp
import shlex
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:  # run as a script from anywhere: the repository is the import root
    sys.path.insert(0, ROOT)

from projects.pe_study.study import report  # noqa: E402
from projects.pe_study.study.encodings import (  # noqa: E402
    DECISION_ROWS,
    ROWS,
    SWEEP_ROWS,
    check_rows,
)
from projects.pe_study.study.jobs import (  # noqa: E402
    FULL_PROTOCOL,
    QUICK_PROTOCOL,
    StudyProtocol,
    estimate_wall_s,
    plan_jobs,
    prepare_inits,
    run_jobs,
)
from projects.pe_study.study.segmentation import prepare_data  # noqa: E402

PARTS = ('seg', 'sweep', 'all', 'report')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train every position encoding on the study\'s segmentation set, '
        'paired by seed; test them at 1x..3x the training size (padded and resized), '
        'under translation and on distant twins; write a markdown report.')
    parser.add_argument('--out', default='docs/pe_study', help='report folder')
    parser.add_argument('--work-dir', default='work_dirs/pe_study',
                        help='per-job results, checkpoints and runner logs')
    parser.add_argument('--data-root', default=None,
                        help='where the study set is generated (default: data/pe_study; '
                        'with --quick: <work-dir>/data)')
    parser.add_argument('--workers', type=int, default=2,
                        help='single-thread worker processes (1: run in this process)')
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help='seeds of every row (default: the protocol\'s)')
    parser.add_argument('--iters', type=int, default=None, help='training iterations')
    parser.add_argument('--rows', nargs='+', default=None, metavar='ROW',
                        help=f'rows to run instead of the part\'s (any of: {", ".join(ROWS)})')
    parser.add_argument('--part', choices=PARTS, default='seg',
                        help="'seg': the decision rows (default); 'sweep': the SaPE2 design "
                        "sweep; 'all': both; 'report': rewrite README.md from the JSON results "
                        "in --out")
    parser.add_argument('--resume', action='store_true',
                        help='reuse finished jobs of an interrupted run with the same protocol')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 1 seed, 2 rows, few images and iterations')
    args = parser.parse_args(argv)
    args.command = 'python projects/pe_study/run.py ' + shlex.join(
        argv if argv is not None else sys.argv[1:])
    base = QUICK_PROTOCOL if args.quick else FULL_PROTOCOL
    args.protocol = StudyProtocol(**dict(
        base.as_dict(), seeds=tuple(args.seeds or base.seeds),
        seg_iters=args.iters or base.seg_iters))
    if args.rows is None:
        parts = {'all': DECISION_ROWS + SWEEP_ROWS, 'seg': DECISION_ROWS,
                 'sweep': SWEEP_ROWS, 'report': ()}[args.part]
        args.rows = ['PEG', 'none'] if args.quick and args.part != 'report' else list(parts)
    check_rows(args.rows)
    if args.data_root is None:
        args.data_root = (osp.join(args.work_dir, 'data') if args.quick else
                          osp.join(ROOT, 'data', 'pe_study'))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    results_path = osp.join(args.out, 'seg_results.json')
    saved = _load_json(results_path, [])
    if args.part == 'report':
        run = _load_json(osp.join(args.out, 'run.json'), None)
        if run is None:
            print(f'{args.out}/run.json is missing: run the study first.', file=sys.stderr)
            return 1
        print(report.write_report(args.out, saved, run))
        return 0
    start = time.time()
    manifest = prepare_data(args.data_root, args.protocol.seg_num_train, args.protocol.quick)
    inits = prepare_inits(args.protocol, osp.abspath(args.work_dir))
    jobs = plan_jobs(args.protocol, args.rows)
    paths = dict(work_dir=osp.abspath(args.work_dir), data=osp.abspath(args.data_root),
                 init=json.dumps({str(k): v for k, v in inits.items()}))
    print(f'{len(jobs)} jobs on {args.workers} worker(s), planned '
          f'{estimate_wall_s(jobs, args.protocol, args.workers) / 60:.0f} min', flush=True)
    results, failures, reused = run_jobs(
        jobs, args.protocol, paths, osp.join(args.work_dir, 'results'), args.workers,
        args.resume, log=lambda line: print(line, flush=True))
    if failures:
        print('failed jobs (the report is not written; rerun with --resume):\n  ' +
              '\n  '.join(failures), file=sys.stderr)
        return 1
    # A part's run keeps the other rows' saved results (same protocol only).
    run_path = osp.join(args.out, 'run.json')
    previous = _load_json(run_path, None)
    same_protocol = previous is not None and previous.get('protocol') == json.loads(
        json.dumps(args.protocol.as_dict()))
    ran = {(r['row'], r['seed']) for r in results}
    kept = [r for r in saved if same_protocol and (r['row'], r['seed']) not in ran]
    results = kept + results
    with open(results_path, 'w') as file:
        json.dump(results, file, indent=1)
    wall_s = time.time() - start
    parts = dict(previous.get('parts', {})) if same_protocol else {}
    parts[args.part] = dict(command=args.command, wall_s=wall_s, workers=args.workers,
                            jobs=len(jobs), reused=reused)
    run = dict(protocol=args.protocol.as_dict(), machine=report.machine(), parts=parts,
               data=dict(manifest['settings'], objects=manifest['objects']))
    with open(run_path, 'w') as file:
        json.dump(run, file, indent=1)
    print(report.write_report(args.out, results, run))
    return 0


def _load_json(path: str, default):
    if not osp.exists(path):
        return default
    with open(path) as file:
        return json.load(file)


if __name__ == '__main__':
    sys.exit(main())
