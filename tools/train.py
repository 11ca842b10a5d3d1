"""Train a classifier, detector or segmenter from an mmsape / mmdet / mmseg config.

Usage:
    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--auto-scale-lr] [--cfg-options key=value ...]
                                 [--launcher pytorch]

The config's ``default_scope`` ('mmdet', 'mmseg', 'mmpretrain' or 'mmsape')
decides which toolbox's modules are registered; mmsape's backbones and
position encodings are available in every scope as ``mmsape.<Name>``.

Before anything is built, the data and the checkpoints the run reads are
checked (:func:`mmsape.apis.check_run_inputs`): a missing one stops the run
with what the config expects there and how to point it elsewhere.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction

# The repository root, so that configs can import 'projects.<name>' modules
# through custom_imports wherever the command is run from.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from mmsape.apis import MissingInputError, build_train_runner  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model with mmsape backbones')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints are saved')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CKPT, or (no value) from the latest checkpoint in work_dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision training (needs a GPU)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help="scale the learning rate by (GPUs x samples per GPU) / the config's "
        'auto_scale_lr.base_batch_size, as mmdet does')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. model.backbone.pos_encoding.type=PEG')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torchrun sets LOCAL_RANK; older launchers pass --local_rank / --local-rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    # --resume without a value: the latest checkpoint in work_dir.
    resume = True if args.resume == 'auto' else (args.resume or False)
    try:
        runner = build_train_runner(args.config, args.cfg_options, work_dir=args.work_dir,
                                    launcher=args.launcher, resume=resume, amp=args.amp,
                                    auto_scale_lr=args.auto_scale_lr, check_inputs=True)
    except MissingInputError as error:
        raise SystemExit(f'{type(error).__name__}: {error}') from None
    runner.train()


if __name__ == '__main__':
    main()
