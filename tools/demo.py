"""The main job on the embedded demo data: train and evaluate SaPE² models on CPU.

1. generates the small COCO / ADE20K-format datasets if missing
   (``tools/misc/generate_demo_data.py``),
2. trains a SaPE² segmenter (ViT + UPerNet) and a SaPE² detector (ViTDet-style
   Mask R-CNN) with ``tools/train.py`` for a few minutes each, with the study's
   best SaPE² form (query-relative lookup in the first two blocks,
   ``configs/_base_/pos_encodings/sape2_qrel_first_blocks.py``),
3. evaluates the final checkpoints with ``tools/test.py`` (mIoU; COCO box/mask AP),
   which also draws every validation image's prediction next to its ground truth
   (``--show-dir``, the toolbox's visualization hook),
4. shows its work: per task, a grid of the first of those drawings and the
   training-loss curve, as PNG files; prints the metrics and the pictures' paths.

Usage:
    python tools/demo.py [--tasks seg det] [--iters N] [--work-dir work_dirs/demo]
                         [--pos-encoding SaPE2]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mmsape.analysis.training_figures import (  # noqa: E402
    plot_train_losses,
    read_train_losses,
    stack_drawings,
)
from mmsape.apis import read_config  # noqa: E402
from mmsape.testing.demo_data import ensure_demo_data  # noqa: E402

#: Drawn by mmdet's and mmseg's visualizers: ground truth left, prediction right.
GT_PRED = ('ground truth', 'prediction')

TASKS = {
    'seg': dict(
        config='configs/demo/upernet_vit-96d4-p8-sape2-qrel-first-blocks_mln_1xb4-300iter_demo-ade20k.py',
        metrics=['mIoU', 'mAcc', 'aAcc'],
        # each class of the config's PerClassIoUMetric: upper_blob / lower_blob
        # differ only in position
        per_class='IoU.{}',
        title='ADE20K-format segmentation',
        columns=GT_PRED),
    'det': dict(
        config='configs/demo/mask-rcnn_vit-96d4-p8-sape2-qrel-first-blocks_simplefpn_1xb4-800iter_demo-coco.py',
        metrics=['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'],
        # each class's box AP of the config's PerClassCocoMetric: the layout
        # classes top_disc / bottom_disc differ only in position
        per_class='coco/bbox_AP.{}',
        title='COCO-format instance segmentation', columns=GT_PRED),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tasks', nargs='+', choices=sorted(TASKS), default=['seg', 'det'])
    parser.add_argument('--iters', type=int, default=None,
                        help="training iterations per task (default: each config's schedule)")
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/demo')
    parser.add_argument('--pos-encoding', default=None,
                        help='swap the position encoding, e.g. PEG or LearnedAPE')
    parser.add_argument('--grid-rows', type=int, default=4,
                        help='validation images in each picture of predictions')
    return parser.parse_args()


def schedule_end_options(config: str, iters: int) -> List[str]:
    """--cfg-options that end the config's schedule with a run of ``iters``
    iterations: the schedulers that end with its training, found by that
    ``end`` rather than by their position in the list."""
    cfg = read_config(ROOT / config)
    return [f'param_scheduler.{index}.end={iters}'
            for index, scheduler in enumerate(cfg.param_scheduler)
            if scheduler.get('end') == cfg.train_cfg.max_iters]


def metric_names(task: str) -> List[str]:
    """The task's summary metrics, then one per class of its config."""
    spec = TASKS[task]
    classes = read_config(ROOT / spec['config']).classes
    return [*spec['metrics'], *(spec['per_class'].format(name) for name in classes)]


def run(command: list) -> None:
    print('\n$ ' + ' '.join(command), flush=True)
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f'demo step failed (exit code {result.returncode}): '
                         f'{" ".join(command)}')


def relative_to_root(path: Path) -> str:
    """``path`` as the commands run from the repository root name it."""
    return os.path.relpath(path, ROOT) if ROOT in path.parents else str(path)


def show_work(task: str, work_dir: Path, drawings_dir: Path, rows: int) -> List[Path]:
    """The pictures of a task: the first ``rows`` drawings of its test (each
    prediction next to its ground truth) in one grid, and its loss curve."""
    spec = TASKS[task]
    drawings = sorted(p for p in drawings_dir.rglob('*') if p.suffix in ('.png', '.jpg'))
    if not drawings:
        raise SystemExit(f'tools/test.py drew nothing in {drawings_dir}')
    grid = stack_drawings(drawings[:rows], work_dir / 'predictions.png',
                          column_titles=spec.get('columns'))
    curve = plot_train_losses(read_train_losses(work_dir, last_run=True),
                              work_dir / 'loss_curve.png',
                              title=f'{spec["title"]}\n{Path(spec["config"]).stem}')
    return [grid, curve]


def main() -> None:
    args = parse_args()
    started = time.time()
    data_root = ensure_demo_data(ROOT / args.data_root)
    print(f'demo data ready in {data_root}')
    results, pictures = {}, {}
    for task in args.tasks:
        spec = TASKS[task]
        work_dir = ROOT / args.work_dir / task
        # the test must build the model that was trained (the same encoding); the
        # demo's encoding options (those of SaPE2) are dropped, not passed to another type
        model_options = (['model.backbone.pos_encoding._delete_=True',
                          f'model.backbone.pos_encoding.type={args.pos_encoding}']
                         if args.pos_encoding else [])
        schedule_options = ([f'train_cfg.max_iters={args.iters}',
                             f'train_cfg.val_interval={args.iters}',
                             *schedule_end_options(spec['config'], args.iters)]
                            if args.iters else [])
        # Losses logged every 10 iterations: the points of the loss curve.
        run([sys.executable, 'tools/train.py', spec['config'], '--work-dir', str(work_dir),
             '--cfg-options', 'default_hooks.logger.interval=10', *schedule_options,
             *model_options])
        checkpoint = (work_dir / 'last_checkpoint').read_text().strip()
        metrics_file, drawings_dir = work_dir / 'test_metrics.json', work_dir / 'test_drawings'
        run([sys.executable, 'tools/test.py', spec['config'], checkpoint, '--work-dir',
             str(work_dir), '--metrics-out', str(metrics_file), '--show-dir', str(drawings_dir),
             *(['--cfg-options', *model_options] if model_options else [])])
        results[task] = json.loads(metrics_file.read_text())
        pictures[task] = show_work(task, work_dir, drawings_dir, args.grid_rows)

    schedule = (f'{args.iters} training iterations per task' if args.iters
                else "each config's schedule")
    print(f'\nmmsape demo results ({schedule}, {(time.time() - started) / 60:.1f} min in all)')
    for task, metrics in results.items():
        print(f'\n{TASKS[task]["title"]} ({TASKS[task]["config"]})')
        for name in metric_names(task):
            if name in metrics:
                print(f'  {name:<28} {metrics[name]:8.3f}')
        for picture in pictures[task]:
            print(f'  picture: {relative_to_root(picture)}')


if __name__ == '__main__':
    main()
