"""The study's segmentation part: one segmenter per (row, seed), trained through
mmseg's own machinery (MMEngine's Runner) on the study's set
(:mod:`.dataset`), then measured without fine-tuning:

* **extrapolation**: mIoU and per-class IoU on larger canvases with more objects
  at the training scale (``pad``: the grid grows, the content scale does not), on
  the 1x images scaled up (``resize``: grid and content grow together), and on
  one non-square canvas;
* **translation equivariance**: how many pixels keep their predicted class when
  the input is rolled (:func:`translation_agreement`);
* **distant similar patches**: the attention mass that the patches of an object
  send to the patches of its distant twin, against an object of another
  identity at a similar distance (:func:`twin_attention`).

Rows are *paired* by seed: every row of a seed starts from the same weights for
everything but its position encoding (:func:`shared_init_checkpoint`, loaded by
the Runner as ``load_from``) and trains on the same batches in the same order
with the same flips (the sampler's seed, :class:`~.hooks.PairedDataSeedHook`).
"""
import copy
import json
import math
import os
import os.path as osp
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image, ImageDraw

from . import hooks  # noqa: F401  (registers PairedDataSeedHook, which seg_config adds)
from .dataset import CLASSES, PALETTE, TRAIN_CANVAS, EvalSet, generate
from .encodings import REPO_ROOT, row_settings

#: The segmenter, relative to the repository root.
SEG_CONFIG = 'projects/pe_study/configs/fcn_vit-96d4-p8_1xb8_pe-study-96x96.py'
#: The padded evaluation sets (the 1x set also serves the resized evaluation and
#: the translation and attention measurements): about the same number of objects
#: in each.
PAD_SETS = (
    EvalSet('val_pad_1x', (96, 96), 100),
    EvalSet('val_pad_1.5x', (144, 144), 45),
    EvalSet('val_pad_2x', (192, 192), 25),
    EvalSet('val_pad_3x', (288, 288), 12),
    EvalSet('val_pad_1x2', (96, 192), 50),
)
#: Scales of the resized evaluation (each 1x validation image scaled up).
RESIZE_SCALES = (1.5, 2.0, 3.0)
#: Shifts (dy, dx) in pixels of the translation measurement: one patch
#: diagonally, half a patch horizontally.
TRANSLATION_SHIFTS = ((8, 8), (0, 4))


def evaluations(num_resized: int, quick: bool = False) -> List[dict]:
    """Every evaluation of a trained model: ``mode`` (``'pad'`` / ``'resize'``),
    ``scale``, ``aspect``, the image ``folder``, the ``size`` it is tested at
    (None: as stored) and how many images (None: all)."""
    rows = [dict(mode='pad', scale=round(s.scale, 3), aspect=round(s.aspect, 3),
                 folder=s.name, size=None, num_images=None) for s in pad_sets(quick)]
    base = pad_sets(quick)[0]
    for scale in RESIZE_SCALES[:1] if quick else RESIZE_SCALES:
        size = (round(base.canvas[0] * scale), round(base.canvas[1] * scale))
        rows.append(dict(mode='resize', scale=scale, aspect=1.0, folder=base.name, size=size,
                         num_images=num_resized))
    return rows


def pad_sets(quick: bool = False) -> Tuple[EvalSet, ...]:
    """:data:`PAD_SETS`; with ``quick``, a few images of the 1x, 2x and non-square ones."""
    if not quick:
        return PAD_SETS
    return tuple(EvalSet(s.name, s.canvas, 2) for s in PAD_SETS if s.name in (
        'val_pad_1x', 'val_pad_2x', 'val_pad_1x2'))


def prepare_data(data_root: str, num_train: int, quick: bool = False) -> dict:
    """Generate the study's set under ``data_root`` unless it is up to date;
    return its manifest (settings and object counts per folder)."""
    generate(data_root, num_train, pad_sets(quick))
    with open(osp.join(data_root, 'manifest.json')) as file:
        return json.load(file)


def seg_config(row: str, seed: int, iters: int, work_dir: str, data_root: str,
               init_checkpoint: Optional[str]) -> Config:
    """The study's segmenter with ``row``'s position encoding, trained for
    ``iters`` iterations with ``seed`` on the set in ``data_root``, starting
    from ``init_checkpoint`` for every weight it shares with the other rows."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, SEG_CONFIG))
    pos_encoding, extra = row_settings(row)
    cfg.model.backbone.pos_encoding = pos_encoding
    cfg.model.backbone.update(extra)
    warmup = max(1, iters // 10)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters + 1  # the study evaluates after training
    cfg.param_scheduler[0].end = warmup
    cfg.param_scheduler[1].begin, cfg.param_scheduler[1].end = warmup, iters
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = max(1, iters // 4)
    cfg.train_dataloader.sampler.seed = seed
    cfg.custom_hooks = list(cfg.custom_hooks) + [
        dict(type='mmsape.PairedDataSeedHook', seed=seed)]
    cfg.randomness = dict(seed=seed)
    cfg.load_from = init_checkpoint
    cfg.work_dir = work_dir
    cfg.experiment_name = osp.basename(work_dir)
    cfg.data_root = data_root
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = data_root
    cfg.launcher = 'none'
    return cfg


def build_model(cfg: Config) -> torch.nn.Module:
    """The config's segmenter with its initial weights (mmseg scope; the
    initialisation's log is not printed)."""
    from mmengine.logging import MMLogger
    from mmseg.registry import MODELS

    from mmsape.utils import prepare_scope
    prepare_scope(cfg)
    MMLogger.get_instance('pe_study_init', log_level='ERROR')  # the 'current' logger
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def shared_init_checkpoint(seed: int, path: str) -> str:
    """Save (unless present) the initial weights every row of ``seed`` starts
    from: the segmenter without position encoding built and initialised under
    ``seed``. Each row loads them as ``load_from``: every weight but its
    encoding's (which have their own initialisation) is then the same."""
    if not osp.exists(path):
        cfg = Config.fromfile(osp.join(REPO_ROOT, SEG_CONFIG))
        cfg.model.backbone.pos_encoding = dict(type='mmsape.NoPositionEncoding')
        torch.manual_seed(seed)
        model = build_model(cfg)
        os.makedirs(osp.dirname(path), exist_ok=True)
        torch.save(dict(state_dict=model.state_dict(), meta=dict(seed=seed)), path + '.tmp')
        os.replace(path + '.tmp', path)
    return path


def test_loader_cfg(cfg: Config, folder: str, size: Optional[Tuple[int, int]] = None,
                    num_images: Optional[int] = None) -> dict:
    """The config's test dataloader on ``images/<folder>``, the images resized to
    ``size`` (height, width) when given, the first ``num_images`` when given."""
    loader = copy.deepcopy(cfg.test_dataloader)
    loader.dataset.data_prefix = dict(img_path=f'images/{folder}',
                                      seg_map_path=f'annotations/{folder}')
    if size is not None:
        loader.dataset.pipeline = [loader.dataset.pipeline[0], dict(
            type='mmseg.Resize', scale=(size[1], size[0]), keep_ratio=False)] + list(
                loader.dataset.pipeline[1:])
    if num_images is not None:
        loader.dataset.indices = num_images
    return loader.to_dict() if hasattr(loader, 'to_dict') else dict(loader)


def evaluate(model: torch.nn.Module, cfg: Config, loader_cfg: dict) -> Dict[str, float]:
    """mIoU, aAcc and ``IoU.<class>`` of ``model`` on one dataloader, with the
    config's evaluator (mmsape's PerClassIoUMetric on mmseg's IoUMetric)."""
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    with DefaultScope.overwrite_default_scope('mmseg'):
        loader = Runner.build_dataloader(loader_cfg)
        evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
        evaluator.dataset_meta = loader.dataset.metainfo
        model.eval()
        with torch.no_grad():
            for data in loader:
                evaluator.process(model.test_step(data), data)
        metrics = evaluator.evaluate(len(loader.dataset))
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.number))}


def translation_agreement(model: torch.nn.Module, cfg: Config, folder: str,
                          num_images: int,
                          shifts: Sequence[Tuple[int, int]] = TRANSLATION_SHIFTS) -> dict:
    """Percent of pixels whose predicted class is the same when the input image
    is rolled circularly by ``(dy, dx)`` pixels and the prediction rolled back,
    for each shift (1x validation images, pixels more than two patches from
    the border): 100 for an equivariant segmenter (a whole-patch roll of a model
    without position encoding)."""
    from mmengine.runner import Runner
    agree = {shift: [0, 0] for shift in shifts}
    margin = 2 * model.backbone.patch_size
    with DefaultScope.overwrite_default_scope('mmseg'):
        loader = Runner.build_dataloader(test_loader_cfg(cfg, folder, num_images=num_images))
        model.eval()
        with torch.no_grad():
            for data in loader:
                plain = _predictions(model, data)
                for dy, dx in shifts:
                    rolled = dict(data, inputs=[torch.roll(x, (dy, dx), dims=(-2, -1))
                                                for x in data['inputs']])
                    back = [torch.roll(p, (-dy, -dx), dims=(-2, -1))
                            for p in _predictions(model, rolled)]
                    for a, b in zip(plain, back):
                        # Pixels within two patches of the border are left out: there
                        # the upsampled logits of the rolled input mix both sides of
                        # the seam or are clamped at the edge, whatever the encoding.
                        m = margin
                        same = a[m:-m, m:-m] == b[m:-m, m:-m]
                        agree[(dy, dx)][0] += int(same.sum())
                        agree[(dy, dx)][1] += same.numel()
    return {f'{dy},{dx}': 100. * same / total for (dy, dx), (same, total) in agree.items()}


def _predictions(model: torch.nn.Module, data: dict) -> List[torch.Tensor]:
    return [sample.pred_sem_seg.data[0] for sample in model.test_step(data)]


@contextmanager
def probed_attention(backbone: torch.nn.Module, probes: torch.Tensor,
                     record: List[torch.Tensor]) -> Iterator[None]:
    """While active, every attention layer of ``backbone`` also attends the
    ``(B, N, P)`` probe values (one column per probe, over all N tokens) with its
    own weights, whatever kernel computes them, and appends the ``(B, heads, N,
    P)`` result to ``record``: column p of token i is the attention mass that i
    gives the tokens where probe p is 1."""
    encoding = backbone.pos_encoding
    attention = encoding.attention

    def attend(layer_index, q, k, v, grid, dropout_p=0., **kwargs):
        out = attention(layer_index, q, k, v, grid, dropout_p=dropout_p, **kwargs)
        width = probes.shape[-1]
        values = torch.zeros_like(v)
        values[..., :width] = probes[:, None].to(v.dtype)
        record.append(attention(layer_index, q, k, values, grid, dropout_p=0., **kwargs)
                      [..., :width].float())
        return out

    encoding.attention = attend
    try:
        yield
    finally:
        del encoding.attention  # back to the class's method


def patch_masks(objects: Sequence[dict], grid_hw: Tuple[int, int], patch: int) -> np.ndarray:
    """``(num_objects, H, W)`` bool: the patches whose centre lies inside each
    object's polygon."""
    height, width = grid_hw
    masks = np.zeros((len(objects), height, width), bool)
    for index, obj in enumerate(objects):
        canvas = Image.new('L', (width * patch, height * patch), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in obj['polygon']], fill=1)
        pixels = np.asarray(canvas)
        masks[index] = pixels[patch // 2::patch, patch // 2::patch][:height, :width] > 0
    return masks


def twin_pairs(objects: Sequence[dict]) -> List[Tuple[int, int, int]]:
    """``(a, twin of a, control)`` object indices: for each twin object, its twin
    and the pastel object of another identity whose distance to it is closest to
    the twin's (so distance alone does not favour either)."""
    def identity(obj):
        return tuple(obj['color']), obj['kind']

    def centre(obj):
        pts = np.asarray(obj['polygon'])
        return (pts.min(0) + pts.max(0)) / 2

    pastel = [i for i, o in enumerate(objects) if o['label'] in ('twin', 'single')]
    triples = []
    for a in pastel:
        twins = [b for b in pastel if b != a and identity(objects[b]) == identity(objects[a])]
        others = [c for c in pastel if identity(objects[c]) != identity(objects[a])]
        if objects[a]['label'] != 'twin' or not twins or not others:
            continue
        b = twins[0]
        distance = np.linalg.norm(centre(objects[a]) - centre(objects[b]))
        c = min(others, key=lambda c: abs(np.linalg.norm(centre(objects[a]) -
                                                         centre(objects[c])) - distance))
        triples.append((a, b, c))
    return triples


def twin_attention(model: torch.nn.Module, cfg: Config, data_root: str, folder: str,
                   num_images: int) -> List[dict]:
    """Per block, the mean (over twin objects, their patches and the heads) of
    the attention mass an object's patches give its twin's patches (``twin``) and
    a control object's patches (``control``: another identity at about the same
    distance, :func:`twin_pairs`)."""
    from mmengine.runner import Runner
    with open(osp.join(data_root, 'objects', f'{folder}.json')) as file:
        objects_of = json.load(file)
    backbone = model.backbone
    patch = backbone.patch_size
    sums: Dict[int, np.ndarray] = {}
    count = 0
    with DefaultScope.overwrite_default_scope('mmseg'):
        loader = Runner.build_dataloader(test_loader_cfg(cfg, folder, num_images=num_images))
        model.eval()
        for data in loader:
            stem = osp.splitext(osp.basename(data['data_samples'][0].img_path))[0]
            objects = objects_of[stem]
            triples = twin_pairs(objects)
            if not triples:
                continue
            inputs = model.data_preprocessor(data, False)['inputs']
            grid_hw = (inputs.shape[-2] // patch, inputs.shape[-1] // patch)
            masks = torch.from_numpy(patch_masks(objects, grid_hw, patch)).flatten(1)
            prefix = backbone.num_prefix_tokens
            # Probes: for each triple, its twin's and its control's patches.
            probes = torch.zeros(1, prefix + masks.shape[1], 2 * len(triples))
            for t, (_, b, c) in enumerate(triples):
                probes[0, prefix:, 2 * t] = masks[b].float()
                probes[0, prefix:, 2 * t + 1] = masks[c].float()
            record: List[torch.Tensor] = []
            with torch.no_grad(), probed_attention(backbone, probes, record):
                backbone(inputs)
            for layer, mass in enumerate(record):  # (1, heads, N, 2T)
                mass = mass[0].mean(0)[prefix:]  # (H*W, 2T), mean over heads
                values = np.zeros(2)
                for t, (a, _, _) in enumerate(triples):
                    rows = masks[a]
                    values += mass[rows][:, 2 * t:2 * t + 2].mean(0).numpy()
                sums[layer] = sums.get(layer, 0) + values
            count += len(triples)
    return [dict(layer=layer, twin=float(v[0] / count), control=float(v[1] / count))
            for layer, v in sorted(sums.items())] if count else []


def train_seg(row: str, seed: int, protocol, work_root: str, data_root: str,
              init_checkpoint: Optional[str]) -> dict:
    """Train ``row`` with ``seed`` and measure it (see the module docstring)."""
    from mmsape.apis import build_train_runner
    slug = row.replace(' ', '_').replace('+', 'p')
    work_dir = osp.join(work_root, f'{slug}_s{seed}')
    cfg = seg_config(row, seed, protocol.seg_iters, work_dir, data_root, init_checkpoint)
    start, start_cpu = time.time(), time.process_time()
    runner = build_train_runner(cfg)
    runner.train()
    train_s, train_cpu_s = time.time() - start, time.process_time() - start_cpu
    model = runner.model.eval()
    results = []
    for evaluation in evaluations(protocol.seg_num_resized, protocol.quick):
        metrics = evaluate(model, cfg, test_loader_cfg(
            cfg, evaluation['folder'], evaluation['size'], evaluation['num_images']))
        results.append(dict({k: v for k, v in evaluation.items() if k != 'folder'},
                            size=list(evaluation['size'] or pad_canvas(evaluation['folder'])),
                            metrics=metrics))
    base = pad_sets(protocol.quick)[0].name
    translation = translation_agreement(model, cfg, base, protocol.seg_num_probe)
    attention = {}
    for scale, folder in ((1.0, base), (2.0, 'val_pad_2x')):
        attention[str(scale)] = twin_attention(model, cfg, data_root, folder,
                                               protocol.seg_num_probe)
    return dict(row=row, seed=seed, train_s=train_s, train_cpu_s=train_cpu_s,
                total_s=time.time() - start, total_cpu_s=time.process_time() - start_cpu,
                evaluations=results, translation=translation, twin_attention=attention)


def pad_canvas(folder: str) -> Tuple[int, int]:
    """The canvas of a padded evaluation set, by its folder name."""
    return next(s.canvas for s in PAD_SETS if s.name == folder)


def mean_iou(result: dict, mode: str, scale: float, aspect: float = 1.0,
             metric: str = 'mIoU') -> Optional[float]:
    """One metric of one evaluation of a result (None if it was not run)."""
    for evaluation in result['evaluations']:
        if evaluation['mode'] == mode and math.isclose(evaluation['scale'], scale) and \
                math.isclose(evaluation['aspect'], aspect):
            return evaluation['metrics'].get(metric)
    return None


__all__ = ['CLASSES', 'PALETTE', 'TRAIN_CANVAS', 'SEG_CONFIG', 'PAD_SETS', 'RESIZE_SCALES',
           'evaluations', 'prepare_data', 'seg_config', 'shared_init_checkpoint', 'evaluate',
           'translation_agreement', 'twin_attention', 'train_seg', 'mean_iou']
