"""Training-iteration time of segmentation / detection configs on synthetic batches.

For each config: its model (random weights; SyncBN as BN, as MMEngine's Runner
does on one process), its optimizer wrapper (``--amp``: MMEngine's
``AmpOptimWrapper`` with a dynamic loss scale, what ``tools/train.py --amp``
sets) and one synthetic batch of ``--batch`` images of ``--size`` x ``--size``
pixels (uint8 noise; random per-pixel classes for segmenters, random boxes and
masks for detectors), run through ``model.train_step`` (data preprocessor,
forward, loss, backward, optimizer step): ``--warmup`` untimed iterations, then
``--iters`` timed ones. The table gives the median iteration time, its ratio
to the first config's (measured in the same run), and the peak memory of an
iteration (CUDA). Data loading is not included: the configs compared share it.

Example (the target of issue 13: SaPE² UPerNet <= 1.3x the APE config)::

    python benchmarks/bench_train_step.py --device cuda --amp --iters 20 \\
        configs/upernet/upernet_vit-s16_mln_8xb2-160k_ade20k-512x512.py \\
        configs/upernet/upernet_vit-s16-sape2_mln_8xb2-160k_ade20k-512x512.py
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import List, Optional

import torch
from mmengine.config import DictAction

# Runnable from a checkout without installing mmsape.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='+', help='the first is the reference of the ratios')
    parser.add_argument('--iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    parser.add_argument('--batch', type=int, default=2, help='images per iteration')
    parser.add_argument('--size', type=int, default=512, help='image side in pixels')
    parser.add_argument('--amp', action='store_true', help='AmpOptimWrapper (CUDA)')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--json', metavar='PATH', help='also write the results there')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override entries of every config, e.g. '
                        'model.data_preprocessor.size="(64,64)"')
    return parser.parse_args(argv)


def synthetic_batch(cfg, args: argparse.Namespace, generator: torch.Generator) -> dict:
    """``model.train_step`` data: uint8 images and ground truth of the config's task."""
    shape = (3, args.size, args.size)
    if cfg.default_scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        torch.manual_seed(0)
        return demo_mm_inputs(batch_size=args.batch, image_shapes=[shape] * args.batch,
                              num_items=[8] * args.batch, with_mask=True,
                              num_classes=cfg.model.roi_head.bbox_head.num_classes)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    num_classes = cfg.model.decode_head.num_classes
    inputs, samples = [], []
    for _ in range(args.batch):
        inputs.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator))
        sample = SegDataSample(metainfo=dict(img_shape=shape[1:], ori_shape=shape[1:],
                                             pad_shape=shape[1:]))
        sample.gt_sem_seg = PixelData(data=torch.randint(
            0, num_classes, (1, *shape[1:]), generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def time_train_step(path: str, args: argparse.Namespace) -> dict:
    """Median iteration time (ms) and peak memory (MiB, CUDA) of one config."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, DefaultScope

    from mmsape.apis import load_config

    cfg = load_config(path, args.cfg_options)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        torch.manual_seed(0)
        model = revert_sync_batchnorm(MODELS.build(cfg.model)).to(args.device).train()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        data = synthetic_batch(cfg, args, torch.Generator().manual_seed(0))
        on_cuda = args.device.startswith('cuda')
        sync = torch.cuda.synchronize if on_cuda else (lambda: None)
        times = []
        for iteration in range(args.warmup + args.iters):
            if iteration == args.warmup and on_cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            losses = model.train_step(data, optim_wrapper)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
        loss = sum(v.item() for k, v in losses.items() if k.startswith('loss'))
    return dict(iter_ms=statistics.median(times[args.warmup:]), loss=loss,
                peak_mib=torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('--device cuda was asked for, but CUDA is not available')
    results = {}
    for path in args.configs:
        start = time.perf_counter()
        results[path] = time_train_step(path, args)
        print(f'{path}: {time.perf_counter() - start:.1f} s', file=sys.stderr, flush=True)
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
    device = (torch.cuda.get_device_name(args.device) if args.device.startswith('cuda')
              else 'cpu')
    print(f'Training iterations (model.train_step on one synthetic batch of {args.batch} x '
          f'{args.size}x{args.size} images), {device}, '
          f'{"AmpOptimWrapper (float16, dynamic loss scale)" if args.amp else "float32"}; '
          f'median of {args.iters} after {args.warmup} warm-up; torch {torch.__version__}.\n')
    print('| config | iteration ms | vs first | peak MiB | last loss |')
    print('|---|---:|---:|---:|---:|')
    reference = results[args.configs[0]]['iter_ms']
    for path, row in results.items():
        peak = f'{row["peak_mib"]:.0f}' if row['peak_mib'] is not None else 'n/a'
        print(f'| {os.path.basename(path)} | {row["iter_ms"]:.1f} | '
              f'{row["iter_ms"] / reference:.2f}x | {peak} | {row["loss"]:.3f} |')
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(results, file, indent=1)


if __name__ == '__main__':
    main()
