"""Evaluate a checkpoint with the config's test dataloader and metric.

Usage:
    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                         [--metrics-out metrics.json] [--show] [--show-dir DIR]
                         [--wait-time 2] [--tta] [--cfg-options key=value ...]
                         [--launcher pytorch]

The options are those of mmdet's and mmseg's ``tools/test.py``: ``--out``
dumps the predictions to a pickle for offline evaluation (mmdet's
``DumpDetResults`` for detectors, MMEngine's ``DumpResults`` otherwise),
``--show`` / ``--show-dir`` switch on the config's visualization hook
(``DetVisualizationHook``, ``SegVisualizationHook`` or mmpretrain's
``VisualizationHook``), which draws each test image's prediction next to its
ground truth, and ``--tta`` wraps the model in the config's ``tta_model`` and
tests it on the ``tta_pipeline``. ``--metrics-out`` writes the metrics as JSON.
The test data is checked before anything is built, as ``tools/train.py`` does.
"""
import argparse
import json
import os
import os.path as osp
import sys
from pathlib import Path

from mmengine.config import DictAction
from mmengine.dist import get_rank

# The repository root, so that configs can import 'projects.<name>' modules
# through custom_imports wherever the command is run from.
sys.path.insert(0, osp.dirname(osp.dirname(osp.realpath(__file__))))
from mmsape.apis import MissingInputError, build_test_runner  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where evaluation logs are saved')
    parser.add_argument('--out', help='dump the predictions to this pickle file (.pkl)')
    parser.add_argument('--metrics-out', help='write the metrics to this JSON file')
    parser.add_argument('--show', action='store_true', help='show each drawing in a window')
    parser.add_argument('--show-dir',
                        help='save the drawing of each test image (prediction next to '
                        'ground truth) in this folder')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds each drawing stays shown with --show')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation with the config's tta_model and "
                        'tta_pipeline')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. test_dataloader.batch_size=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out {args.out}: the predictions are dumped to a pickle; name a '
                     '.pkl file (--metrics-out writes the metrics as JSON)')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'Checkpoint not found: {args.checkpoint}')
    try:
        runner = build_test_runner(args.config, args.checkpoint, args.cfg_options,
                                   work_dir=args.work_dir, launcher=args.launcher,
                                   show=args.show, show_dir=args.show_dir,
                                   wait_time=args.wait_time, tta=args.tta, out=args.out,
                                   check_inputs=True)
    except MissingInputError as error:
        raise SystemExit(f'{type(error).__name__}: {error}') from None
    metrics = runner.test()
    if get_rank() != 0:
        return
    if args.out:
        print(f'predictions dumped to {args.out}')
    if args.show_dir:
        drawings = [p for p in Path(args.show_dir).rglob('*')
                    if p.suffix.lower() in ('.png', '.jpg')]
        print(f'{len(drawings)} drawings in {args.show_dir}')
    if args.metrics_out:
        with open(args.metrics_out, 'w') as f:
            json.dump({k: float(v) if hasattr(v, '__float__') else v
                       for k, v in metrics.items()}, f, indent=2)
        print(f'metrics written to {args.metrics_out}')


if __name__ == '__main__':
    main()
