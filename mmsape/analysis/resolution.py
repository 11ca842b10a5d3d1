"""Evaluate a trained model at other input sizes without fine-tuning.

The sizes are written ``(height, width)``. :func:`sweep_sizes` builds them from
a base (training) size, scale factors and aspect ratios ``width / height``: an
aspect ``a >= 1`` widens the image (``W = W0 * s * a``), an aspect ``a < 1``
heightens it (``H = H0 * s / a``), so ``32x32`` at aspect 2 is ``32x64`` and at
aspect 1/2 ``64x32``, the 1:2 .. 2:1 range of the CPVT / RoPE-ViT transfer tables.

:func:`override_test_resize` rewrites a config's test pipeline so every image
reaches the model at exactly that size, whatever the task (mmpretrain's
``ResizeEdge`` + ``CenterCrop``, mmseg's / mmdet's keep-ratio ``Resize``);
predictions are then evaluated by the config's own evaluator (segmentation
predictions are resized back to the original label map by mmseg, as usual).
"""
import copy
import csv
import math
import os.path as osp
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.config import Config

from mmsape.utils.config_entries import type_name_of

#: Resize transforms whose target size the sweep overrides.
RESIZE_TYPES = ('Resize', 'ResizeEdge', 'RandomResize', 'RandomChoiceResize',
                'RandomResizedCrop', 'FixScaleResize')
CROP_TYPES = ('CenterCrop', )
CSV_COLUMNS = ('checkpoint', 'config', 'height', 'width', 'scale', 'aspect', 'metric', 'value')


def parse_size(text: str) -> Tuple[int, int]:
    """``'32'`` -> ``(32, 32)``; ``'32x64'`` -> ``(32, 64)`` (height x width)."""
    parts = text.lower().split('x')
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f'Size {text!r} is not "N" or "HxW" (e.g. 32 or 32x64).')
    height, width = int(parts[0]), int(parts[-1])
    if height < 1 or width < 1:
        raise ValueError(f'Size {text!r} must be positive.')
    return height, width


def sweep_sizes(base_hw: Tuple[int, int],
                scales: Sequence[float] = (0.5, 0.75, 1.0, 1.5, 2.0),
                aspects: Sequence[float] = (1.0, )) -> List[dict]:
    """Sizes for every (scale, aspect) pair, see the module docstring.

    Returns:
        list[dict]: ``height``, ``width``, ``scale``, ``aspect`` per size, without
        duplicates, in (aspect, scale) order.
    """
    sizes, seen = [], set()
    for aspect in aspects:
        if aspect <= 0:
            raise ValueError(f'aspect={aspect} must be > 0 (width / height).')
        for scale in scales:
            if scale <= 0:
                raise ValueError(f'scale={scale} must be > 0.')
            height = base_hw[0] * scale / min(aspect, 1.)
            width = base_hw[1] * scale * max(aspect, 1.)
            size = (max(1, round(height)), max(1, round(width)))
            if size not in seen:
                seen.add(size)
                sizes.append(dict(height=size[0], width=size[1], scale=scale, aspect=aspect))
    return sizes


def describe_size(height: int, width: int, base_hw: Tuple[int, int]) -> dict:
    """``scale`` (geometric-mean side ratio to the base) and ``aspect`` of a size."""
    scale = math.sqrt(height * width / (base_hw[0] * base_hw[1]))
    return dict(height=height, width=width, scale=round(scale, 4),
                aspect=round((width / height) / (base_hw[1] / base_hw[0]), 4))


def override_test_resize(pipeline: Sequence[dict], height: int, width: int,
                         keep_ratio: bool = False) -> List[dict]:
    """A copy of ``pipeline`` whose images come out exactly ``height x width``
    (or, with ``keep_ratio``, scaled into that box).

    * With a ``CenterCrop`` (ImageNet-style ``ResizeEdge(256)`` + ``CenterCrop(224)``)
      the resize keeps its ratio to the crop: short edge
      ``ceil(scale * max(H, W) / crop)``, then a crop of ``(W, H)``.
    * Otherwise every resize becomes ``Resize(scale=(W, H), keep_ratio=keep_ratio)``.
      With ``keep_ratio=True`` each image keeps its aspect ratio and is scaled as
      large as fits a long side of ``max(H, W)`` and a short side of
      ``min(H, W)`` (mmcv's rule, whatever the image's orientation): a box twice
      the training box shows every image at twice its training size, which is
      the extrapolation protocol of CPVT / RoPE-ViT / LookHere for images of
      mixed aspect ratios.

    Raises:
        ValueError: If the pipeline has no resize to override, or
            ``keep_ratio`` is asked of a pipeline with a crop.
    """
    pipeline = copy.deepcopy(list(pipeline))
    resize_at = [i for i, t in enumerate(pipeline) if type_name_of(t) in RESIZE_TYPES]
    crop_at = [i for i, t in enumerate(pipeline) if type_name_of(t) in CROP_TYPES]
    if not resize_at:
        raise ValueError(f'The test pipeline has no {"/".join(RESIZE_TYPES)} transform to '
                         f'override: {[t.get("type") for t in pipeline]}.')
    if crop_at and keep_ratio:
        raise ValueError('keep_ratio=True scales whole images into a box; this test '
                         'pipeline crops them to a fixed size (CenterCrop), so use '
                         'keep_ratio=False.')
    if crop_at:
        crop = pipeline[crop_at[0]]
        crop_size = crop.get('crop_size', 224)
        crop_side = max(crop_size) if isinstance(crop_size, (tuple, list)) else crop_size
        old = pipeline[resize_at[0]]
        old_scale = old.get('scale', crop_side)
        old_side = min(old_scale) if isinstance(old_scale, (tuple, list)) else old_scale
        short = math.ceil(old_side * max(height, width) / crop_side)
        pipeline[resize_at[0]] = dict(type='ResizeEdge', scale=short, edge='short')
        crop['crop_size'] = (width, height)
        for i in resize_at[1:]:
            pipeline[i] = None
    else:
        pipeline[resize_at[0]] = dict(type='Resize', scale=(width, height),
                                      keep_ratio=keep_ratio)
        for i in resize_at[1:]:
            pipeline[i] = None
    return [t for t in pipeline if t is not None]


def base_size_of(cfg: Config) -> Tuple[int, int]:
    """The training size ``(H, W)``: the backbone's ``img_size``."""
    img_size = cfg.model.get('backbone', cfg.model).get('img_size', 224)
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def evaluate_at_sizes(config: Union[str, Config],
                      checkpoint: Optional[str],
                      sizes: Sequence[dict],
                      work_dir: Optional[str] = None,
                      cfg_options: Optional[dict] = None,
                      metrics: Optional[Sequence[str]] = None,
                      keep_ratio: bool = False) -> List[dict]:
    """Run the config's test loop once per size; one CSV row per (size, metric).

    Args:
        config (str | Config): The model's config.
        checkpoint (str, optional): Weights to load; None evaluates the
            initialisation (for tests).
        sizes (Sequence[dict]): ``height``, ``width`` (and ``scale``, ``aspect``).
        work_dir (str, optional): Runner work dir (logs). Defaults to a temp dir.
        cfg_options (dict, optional): Merged into the config first.
        metrics (Sequence[str], optional): Metric names to keep (as the
            evaluator names them, e.g. ``'mIoU'``, ``'accuracy/top1'``); all
            numeric ones by default.
        keep_ratio (bool): Scale each image into the ``height x width`` box
            keeping its aspect ratio instead of resizing it to exactly that size
            (see :func:`override_test_resize`). Defaults to False.

    Returns:
        list[dict]: Rows with :data:`CSV_COLUMNS`.
    """
    from mmsape.apis import build_test_runner, load_config
    cfg = load_config(config, cfg_options)
    config_name = config if isinstance(config, str) else (cfg.filename or '<Config>')
    base_pipeline = cfg.test_dataloader.dataset.pipeline
    work_dir = work_dir or tempfile.mkdtemp(prefix='resolution_sweep_')
    rows = []
    for index, size in enumerate(sizes):
        size_cfg = copy.deepcopy(cfg)
        size_cfg.test_dataloader.dataset.pipeline = override_test_resize(
            base_pipeline, size['height'], size['width'], keep_ratio)
        # Only the test loop runs: drop the training/validation parts so that a
        # config's train dataset need not exist where the sweep runs.
        for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler',
                    'val_dataloader', 'val_cfg', 'val_evaluator'):
            size_cfg[key] = None
        size_cfg.default_hooks = dict(
            logger=dict(type='LoggerHook', interval=10**6),
            timer=dict(type='IterTimerHook'))
        size_cfg.custom_hooks = []
        size_cfg.visualizer = dict(type='Visualizer', vis_backends=[])
        size_cfg.log_level = 'WARNING'
        # Every size reuses the same weights; a fresh Runner per size keeps the
        # pipelines independent (the dataloader is built once per Runner).
        size_cfg.experiment_name = f'size{index}'
        runner = build_test_runner(
            size_cfg, checkpoint, work_dir=osp.join(work_dir, f'{size["height"]}x{size["width"]}'))
        results = runner.test()
        for name, value in sorted(results.items()):
            if metrics and name not in metrics:
                continue
            # mmseg returns numpy float32 scalars, which are not Python floats.
            if isinstance(value, (int, float, np.number)):
                rows.append(dict(checkpoint=checkpoint or 'init', config=config_name,
                                 height=size['height'], width=size['width'],
                                 scale=size.get('scale', ''), aspect=size.get('aspect', ''),
                                 metric=name, value=float(value)))
    return rows


def write_csv(rows: Sequence[dict], path: str,
              columns: Sequence[str] = CSV_COLUMNS) -> None:
    """Write rows (dicts) with exactly ``columns`` (extra keys are an error)."""
    with open(path, 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def plot_metric_vs_size(rows: Sequence[dict], path: str, label_key: str = 'checkpoint',
                        title: str = '') -> None:
    """One PNG panel per metric: value vs sqrt(H*W), one line per ``label_key``.

    Square sizes are joined by lines; non-square sizes are drawn as markers
    annotated ``HxW``, so the two kinds of transfer can be read apart.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    metrics = sorted({r['metric'] for r in rows})
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        labels: Dict[str, List[dict]] = {}
        for row in rows:
            if row['metric'] == metric:
                labels.setdefault(str(row[label_key]), []).append(row)
        for color, (label, group) in zip(_colors(len(labels)), labels.items()):
            square = sorted((r for r in group if int(r['height']) == int(r['width'])),
                            key=lambda r: int(r['height']))
            other = [r for r in group if int(r['height']) != int(r['width'])]
            ax.plot([int(r['height']) for r in square], [float(r['value']) for r in square],
                    'o-', color=color, label=osp.basename(label))
            for r in other:
                side = math.sqrt(int(r['height']) * int(r['width']))
                ax.plot(side, float(r['value']), 's', color=color, mfc='none')
                ax.annotate(f'{r["height"]}x{r["width"]}', (side, float(r['value'])),
                            fontsize=6, color=color)
        ax.set_xlabel('input side (sqrt(H*W) for non-square, hollow squares)')
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or 'metric vs input resolution (no fine-tuning)')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _colors(num: int) -> list:
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap('tab20' if num > 10 else 'tab10')
    return [cmap(i % cmap.N) for i in range(num)]


def format_table(rows: Sequence[dict], label_key: str = 'checkpoint') -> str:
    """Markdown table: one line per (label, metric), one column per size."""
    sizes = sorted({(int(r['height']), int(r['width'])) for r in rows},
                   key=lambda s: (s[0] != s[1], s[0] * s[1], s))
    header = ['model', 'metric'] + [f'{h}x{w}' for h, w in sizes]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    keys = sorted({(str(r[label_key]), r['metric']) for r in rows})
    for label, metric in keys:
        values = {(int(r['height']), int(r['width'])): float(r['value']) for r in rows
                  if str(r[label_key]) == label and r['metric'] == metric}
        cells = [f'{values[s]:.2f}' if s in values else '-' for s in sizes]
        lines.append('| ' + ' | '.join([osp.basename(label), metric] + cells) + ' |')
    return '\n'.join(lines)


__all__ = [
    'CSV_COLUMNS', 'parse_size', 'sweep_sizes', 'describe_size', 'override_test_resize',
    'base_size_of', 'evaluate_at_sizes', 'write_csv', 'plot_metric_vs_size', 'format_table'
]
