"""Translation-equivariance score per block of PosEncViT models.

Shifts each test image by whole patches (and optionally sub-patch pixel
offsets), runs the backbone on the shifted and unshifted inputs, and compares the
shifted feature maps of every block with the unshifted ones moved by the same
amount; classifiers also get the invariance of their logits. The scores are
defined in :mod:`mmsape.analysis.equivariance` (``cosine``: mean token cosine
similarity; ``rel_score``: 1 - relative error; both exactly 1.0 for an
equivariant model, e.g. no position encoding under whole-patch circular shifts).

Writes ``equivariance.csv`` (one row per model, shift, block; block -1 holds the
logit scores), ``equivariance.png`` and prints a table.

Example::

    python tools/analysis/equivariance.py \\
        --model configs/demo/vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet.py \\
                work_dirs/cls/iter_300.pth \\
        --patch-shifts 1 2 4 --sub-patch-offsets 2 4 --mode circular
"""
import argparse
import csv
import os
import os.path as osp
import sys
from typing import List

import torch
from mmengine.config import DictAction

from mmsape.analysis.equivariance import (
    SHIFT_MODES,
    find_backbone,
    load_model,
    pixel_shifts,
    score_model,
)

CSV_COLUMNS = ('model', 'mode', 'shift_y', 'shift_x', 'shift_patches', 'layer', 'cosine',
               'rel_score', 'logit_cosine', 'top1_agreement', 'num_images')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Per-block translation-equivariance scores of PosEncViT models.')
    parser.add_argument('--model', nargs=2, action='append', required=True,
                        metavar=('CONFIG', 'CHECKPOINT'),
                        help='a config and its checkpoint (repeatable); CHECKPOINT "none" '
                        'scores the initialisation')
    parser.add_argument('--patch-shifts', type=int, nargs='+', default=[1, 2],
                        help='diagonal shifts in whole patches')
    parser.add_argument('--sub-patch-offsets', type=int, nargs='*', default=[],
                        help='horizontal shifts in pixels that are not patch multiples')
    parser.add_argument('--mode', choices=SHIFT_MODES, default='circular',
                        help='circular: torch.roll; crop: two overlapping crops')
    parser.add_argument('--num-images', type=int, default=32,
                        help='test images to use (from the config\'s test dataloader)')
    parser.add_argument('--out-dir', default='work_dirs/equivariance', help='output folder')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every config, key=value')
    return parser.parse_args(argv)


def plot_scores(rows: List[dict], path: str) -> None:
    """Cosine score vs block, one line per (model, shift); logits as a separate panel."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, ax_logit) = plt.subplots(1, 2, figsize=(12, 4.2))
    groups = {}
    for row in rows:
        groups.setdefault((row['model'], row['shift_y'], row['shift_x']), []).append(row)
    for (model, dy, dx), group in groups.items():
        blocks = sorted((r for r in group if r['layer'] >= 0), key=lambda r: r['layer'])
        ax.plot([r['layer'] for r in blocks], [r['cosine'] for r in blocks], 'o-',
                label=f'{osp.basename(str(model))} ({dy},{dx})px')
    logit_rows = [r for r in rows if r['layer'] < 0]
    names = sorted({str(r['model']) for r in logit_rows})
    for name in names:
        group = sorted((r for r in logit_rows if str(r['model']) == name),
                       key=lambda r: (r['shift_patches'], r['shift_x']))
        ax_logit.plot(range(len(group)), [r['top1_agreement'] for r in group], 'o-',
                      label=osp.basename(name))
        ax_logit.set_xticks(range(len(group)),
                            [f'({r["shift_y"]},{r["shift_x"]})' for r in group], fontsize=7)
    ax.set_xlabel('block')
    ax.set_ylabel('cosine(shifted features, shifted-back reference)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax_logit.set_xlabel('shift (dy, dx) pixels')
    ax_logit.set_ylabel('top-1 agreement')
    ax_logit.grid(alpha=0.3)
    if names:
        ax_logit.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_rows(rows: List[dict], path: str) -> None:
    with open(path, 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=list(CSV_COLUMNS), restval='')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, '') for k in CSV_COLUMNS})


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    for config, checkpoint in args.model:
        ckpt = None if checkpoint.lower() == 'none' else checkpoint
        model, loader = load_model(config, ckpt, args.cfg_options)
        patch = find_backbone(model).patch_size
        shifts = pixel_shifts(patch, args.patch_shifts, args.sub_patch_offsets)
        rows += score_model(model, loader, shifts, args.mode, args.num_images,
                            name=ckpt or f'{osp.basename(config)}:init')
    write_rows(rows, osp.join(args.out_dir, 'equivariance.csv'))
    plot_scores(rows, osp.join(args.out_dir, 'equivariance.png'))
    print('| model | shift (px) | block | cosine | rel_score | logit cos | top-1 agree |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        block = 'logits' if r['layer'] < 0 else r['layer']
        cells = [f'{r[k]:.6f}' if k in r else '-'
                 for k in ('cosine', 'rel_score', 'logit_cosine', 'top1_agreement')]
        print(f'| {osp.basename(str(r["model"]))} | ({r["shift_y"]},{r["shift_x"]}) | {block} | '
              + ' | '.join(cells) + ' |')
    print(f'\nwrote {args.out_dir}/equivariance.csv and equivariance.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
