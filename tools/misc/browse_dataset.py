"""Draw what a config trains on: each sample of its training set after the
training pipeline (augmentation included), with its labels, through the
toolbox's visualizer (mmdet: boxes and masks; mmseg: label maps; mmpretrain:
the class), as mmdet's, mmseg's and mmpretrain's ``browse_dataset.py`` do.

Usage:
    python tools/misc/browse_dataset.py CONFIG --output-dir DIR [--show] [--not-show]
        [--show-interval 2] [--show-number N] [--cfg-options key=value ...]

Without ``--output-dir`` the drawings are shown in a window (unless
``--not-show``), as in the toolboxes' scripts; with it they are written there
(``<index>_<image name>.png``), and shown too with ``--show``.
"""
import argparse
import sys
from pathlib import Path

from mmengine.config import DictAction

# The repository root, so that configs can import 'projects.<name>' modules
# through custom_imports wherever the command is run from.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmsape.analysis import browse_dataset  # noqa: E402
from mmsape.apis import MissingInputError  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw the samples a config trains on')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--output-dir', help='write the drawings to this folder')
    parser.add_argument('--show', action='store_true',
                        help='show each drawing in a window (the default without --output-dir)')
    parser.add_argument('--not-show', action='store_true',
                        help='never show a window (as the toolboxes\' scripts take it)')
    parser.add_argument('--show-interval', type=float, default=2,
                        help='seconds each drawing stays shown')
    parser.add_argument('--show-number', type=int, default=None,
                        help='draw only the first N samples (default: all)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. '
                        'train_dataloader.dataset.data_root=/data/ade/ADEChallengeData2016')
    args = parser.parse_args()
    if args.show and args.not_show:
        parser.error('--show and --not-show contradict each other; give one.')
    if args.output_dir is None and args.not_show:
        parser.error('nothing to do: --not-show without --output-dir; give --output-dir DIR '
                     'to write the drawings.')
    if args.show_number is not None and args.show_number < 1:
        parser.error(f'--show-number {args.show_number}: draw at least one sample.')
    return args


def main() -> None:
    args = parse_args()
    show = args.show or (args.output_dir is None and not args.not_show)
    try:
        written = browse_dataset(args.config, args.output_dir,
                                 max_samples=args.show_number, show=show,
                                 wait_time=args.show_interval, cfg_options=args.cfg_options)
    except MissingInputError as error:
        raise SystemExit(f'{type(error).__name__}: {error}') from None
    if args.output_dir is not None:
        print(f'{len(written)} drawings in {args.output_dir}')


if __name__ == '__main__':
    main()
