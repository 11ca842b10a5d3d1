"""The main job on the embedded demo data: train and evaluate SaPE² models on CPU.

1. generates the small COCO / ADE20K-format datasets if missing
   (``tools/misc/generate_demo_data.py``),
2. trains a SaPE² segmenter (ViT + UPerNet) and a SaPE² detector (ViTDet-style
   Mask R-CNN) with ``tools/train.py`` for a few minutes each,
3. evaluates the final checkpoints with ``tools/test.py`` (mIoU; COCO box/mask AP)
   and prints the metrics.

Usage:
    python tools/demo.py [--tasks seg det] [--iters 300] [--work-dir work_dirs/demo]
                         [--pos-encoding SaPE2]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mmsape.testing.demo_data import ensure_demo_data  # noqa: E402

TASKS = {
    'seg': dict(
        config='configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py',
        metrics=['mIoU', 'mAcc', 'aAcc'], title='ADE20K-format segmentation'),
    'det': dict(
        config='configs/demo/mask-rcnn_vit-96d4-p16-sape2_simplefpn_1xb4-300iter_demo-coco.py',
        metrics=['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'],
        title='COCO-format instance segmentation'),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tasks', nargs='+', choices=sorted(TASKS), default=['seg', 'det'])
    parser.add_argument('--iters', type=int, default=300, help='training iterations per task')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/demo')
    parser.add_argument('--pos-encoding', default=None,
                        help='swap the position encoding, e.g. PEG or LearnedAPE')
    return parser.parse_args()


def schedule_end_options(config: str, iters: int) -> List[str]:
    """--cfg-options that end the config's schedule with a run of ``iters``
    iterations: the schedulers that end with its training, found by that
    ``end`` rather than by their position in the list."""
    cfg = Config.fromfile(str(ROOT / config))
    return [f'param_scheduler.{index}.end={iters}'
            for index, scheduler in enumerate(cfg.param_scheduler)
            if scheduler.get('end') == cfg.train_cfg.max_iters]


def run(command: list) -> None:
    print('\n$ ' + ' '.join(command), flush=True)
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f'demo step failed (exit code {result.returncode}): '
                         f'{" ".join(command)}')


def main() -> None:
    args = parse_args()
    started = time.time()
    data_root = ensure_demo_data(ROOT / args.data_root)
    print(f'demo data ready in {data_root}')
    results = {}
    for task in args.tasks:
        spec = TASKS[task]
        work_dir = Path(args.work_dir) / task
        options = [f'train_cfg.max_iters={args.iters}', f'train_cfg.val_interval={args.iters}',
                   *schedule_end_options(spec['config'], args.iters)]
        if args.pos_encoding:
            options.append(f'model.backbone.pos_encoding.type={args.pos_encoding}')
        run([sys.executable, 'tools/train.py', spec['config'], '--work-dir', str(work_dir),
             '--cfg-options', *options])
        checkpoint = (ROOT / work_dir / 'last_checkpoint').read_text().strip()
        metrics_file = work_dir / 'test_metrics.json'
        run([sys.executable, 'tools/test.py', spec['config'], checkpoint, '--work-dir',
             str(work_dir), '--out', str(metrics_file)])
        results[task] = json.loads((ROOT / metrics_file).read_text())

    print(f'\nmmsape demo results ({args.iters} training iterations per task, '
          f'{(time.time() - started) / 60:.1f} min in all)')
    for task, metrics in results.items():
        print(f'\n{TASKS[task]["title"]} ({TASKS[task]["config"]})')
        for name in TASKS[task]['metrics']:
            if name in metrics:
                print(f'  {name:<20} {metrics[name]:8.3f}')


if __name__ == '__main__':
    main()
