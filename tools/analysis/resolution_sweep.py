"""Evaluate checkpoints at other input sizes, square and non-square, without fine-tuning.

Each model is a config and a checkpoint; the config's own test dataloader and
evaluator are used (mmpretrain, mmseg or mmdet), with the test pipeline's resize
overridden per size (see :mod:`mmsape.analysis.resolution`). Writes a CSV
(columns: checkpoint, config, height, width, scale, aspect, metric, value), a PNG
(metric vs resolution, one line per checkpoint) and prints a markdown table.

Example: the demo segmenter with SaPE2 and with a learned APE
(``python tools/demo.py --tasks seg --pos-encoding LearnedAPE --work-dir
work_dirs/demo_ape``), each with the config its run saved in its work dir::

    CONFIG=upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py
    python tools/analysis/resolution_sweep.py \\
        --model work_dirs/demo/seg/$CONFIG work_dirs/demo/seg/iter_300.pth \\
        --model work_dirs/demo_ape/seg/$CONFIG work_dirs/demo_ape/seg/iter_300.pth \\
        --scales 0.5 0.75 1 1.5 2 --aspects 0.5 1 2 --out-dir work_dirs/res_sweep
"""
import argparse
import os
import os.path as osp
import sys

import torch
from mmengine.config import DictAction

from mmsape.analysis.resolution import (
    CSV_COLUMNS,
    base_size_of,
    describe_size,
    evaluate_at_sizes,
    format_table,
    parse_size,
    plot_metric_vs_size,
    sweep_sizes,
    write_csv,
)
from mmsape.apis import load_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Evaluate checkpoints at several input sizes (no fine-tuning).')
    parser.add_argument('--model', nargs=2, action='append', required=True,
                        metavar=('CONFIG', 'CHECKPOINT'),
                        help='a config and its checkpoint; repeat for several models. '
                        'CHECKPOINT "none" evaluates the initialisation.')
    parser.add_argument('--scales', type=float, nargs='+', default=[0.5, 0.75, 1.0, 1.5, 2.0],
                        help='scale factors of the base (training) size')
    parser.add_argument('--aspects', type=float, nargs='+', default=[1.0],
                        help='aspect ratios width/height relative to the base size, e.g. '
                        '0.5 1 2 (1:2 .. 2:1)')
    parser.add_argument('--sizes', nargs='+', default=None,
                        help='explicit sizes instead of --scales/--aspects: N or HxW')
    parser.add_argument('--base-size', default=None,
                        help="training size N or HxW; default: the backbone's img_size")
    parser.add_argument('--metrics', nargs='+', default=None,
                        help="metric names to keep (e.g. mIoU accuracy/top1); default all")
    parser.add_argument('--out-dir', default='work_dirs/resolution_sweep',
                        help='where resolution_sweep.csv / .png and runner logs go')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every config, key=value')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    for index, (config, checkpoint) in enumerate(args.model):
        cfg = load_config(config, args.cfg_options)
        base_hw = parse_size(args.base_size) if args.base_size else base_size_of(cfg)
        if args.sizes:
            sizes = [describe_size(*parse_size(s), base_hw) for s in args.sizes]
        else:
            sizes = sweep_sizes(base_hw, args.scales, args.aspects)
        ckpt = None if checkpoint.lower() == 'none' else checkpoint
        model_rows = evaluate_at_sizes(cfg, ckpt, sizes,
                                       work_dir=osp.join(args.out_dir, f'model{index}'),
                                       metrics=args.metrics)
        for row in model_rows:
            row['config'] = config
        rows += model_rows
    if not rows:
        print('No numeric metric was produced; check --metrics.', file=sys.stderr)
        return 1
    csv_path = osp.join(args.out_dir, 'resolution_sweep.csv')
    png_path = osp.join(args.out_dir, 'resolution_sweep.png')
    write_csv(rows, csv_path, CSV_COLUMNS)
    plot_metric_vs_size(rows, png_path)
    print(format_table(rows))
    print(f'\nwrote {csv_path} and {png_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
