"""The study's segmentation part: the demo UPerNet trained through the real
mmseg machinery with each encoding on the study's segmentation set (the demo
data variant ``'seg_frame_relation'``: classes defined by colour, by the image
frame and by a neighbour), then evaluated at 1x..3x its training size
(:func:`~mmsape.analysis.resolution.evaluate_at_sizes`, per-class IoU) and
scored for equivariance (see :mod:`projects.pe_study.study`)."""
import copy
import os.path as osp
import time
from typing import Tuple

from mmengine.config import Config

from mmsape.analysis.equivariance import score_model
from mmsape.analysis.resolution import describe_size, evaluate_at_sizes
from mmsape.testing.demo_data import (
    FRAME_RELATION_SEG_CLASSES,
    FRAME_RELATION_SEG_GROUPS,
    FRAME_RELATION_SEG_PALETTE,
    ensure_demo_data,
    read_demo_manifest,
)
from mmsape.utils.config_entries import find_entry

from .encodings import ROWS, row_settings

#: Encodings of the digits part only (to fit the budget): the segmentation part
#: runs every other row of ``ROWS``, i.e. the goal's comparisons
#: (APE, PEG, RoPE mixed, LookHere), every new encoding and the published SaPE²
#: alone and with APE. A new row of ``ROWS`` runs in both parts.
DIGITS_ONLY = ('sin-cos', 'RoPE axial', 'CoPE', 'PEG+GAP', 'SaPE2 key')
SEG_ENCODINGS = tuple(name for name in ROWS if name not in DIGITS_ONLY)
#: (H, W) the segmenter is trained at: the study set's images are tall (height /
#: width 1.5..2), resized keeping their aspect ratio into this box (mmcv's box is
#: orientation-free: long side <= 160, short <= 80) they are 120..160 x 80 pixels,
#: and the APE table is this grid (20 x 10 patches).
SEG_BASE = (160, 80)
#: The extrapolation protocol: each validation image at 1x, 1.5x, 2x and 3x its
#: training size (its aspect ratio kept, like the training resize).
SEG_SCALES = (1.0, 1.5, 2.0, 3.0)
#: The demo config, relative to the repository root.
SEG_CONFIG = 'configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py'
#: The study's segmentation set: demo data variant, where it is generated
#: (relative to the repository root) and the folder the configs read in it.
SEG_DATA_VARIANT = 'seg_frame_relation'
SEG_DATA_ROOT = 'data/pe_study'
SEG_DATA_FOLDER = 'ade_frame_relation/ADEChallengeData2016'
SEG_CLASSES = FRAME_RELATION_SEG_CLASSES
SEG_CLASS_GROUPS = FRAME_RELATION_SEG_GROUPS


def seg_sizes(quick: bool = False) -> list:
    """The evaluation boxes ``height``, ``width``, ``scale``, ``aspect``."""
    scales = SEG_SCALES[:2] if quick else SEG_SCALES
    return [describe_size(round(SEG_BASE[0] * s), round(SEG_BASE[1] * s), SEG_BASE)
            for s in scales]


def prepare_seg_data(data_root: str, num_train: int, num_val: int) -> Tuple[str, dict]:
    """Generate the study's segmentation set under ``data_root`` unless up to
    date. Returns the folder the configs read (``<data_root>/SEG_DATA_FOLDER``)
    and the set's statistics from its manifest (per split and class: regions and
    their share centred in the upper half of the image)."""
    ensure_demo_data(data_root, seed=0, num_train=num_train, num_val=num_val,
                     variant=SEG_DATA_VARIANT)
    task = read_demo_manifest(data_root, SEG_DATA_VARIANT)['tasks'][SEG_DATA_FOLDER.split('/')[0]]
    stats = {key: task[key] for key in ('num_shapes', 'upper_half_share')}
    return osp.join(data_root, SEG_DATA_FOLDER), stats


def seg_config(name: str, seed: int, iters: int, work_dir: str, root: str,
               data_root: str = '') -> Config:
    """The demo config with encoding ``name``, trained at :data:`SEG_BASE` for
    ``iters`` iterations on the study's set in ``data_root`` (the folder
    :func:`prepare_seg_data` returns; default: the one under
    ``<root>/SEG_DATA_ROOT``); ``root`` is the repository root."""
    cfg = Config.fromfile(osp.join(root, SEG_CONFIG))
    pos_encoding, extra = row_settings(name)
    cfg.model.backbone.pos_encoding = copy.deepcopy(pos_encoding)
    cfg.model.backbone.update(extra)
    cfg.model.backbone.img_size = SEG_BASE
    cfg.model.decode_head.num_classes = len(SEG_CLASSES)
    cfg.model.auxiliary_head.num_classes = len(SEG_CLASSES)
    scale = (SEG_BASE[1], SEG_BASE[0])  # mmcv scale is (long, short) / (w, h)
    find_entry(cfg.train_dataloader.dataset.pipeline, 'RandomResize').scale = scale
    find_entry(cfg.val_dataloader.dataset.pipeline, 'Resize').scale = scale
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    warmup = max(1, iters // 10)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup),
        dict(type='PolyLR', eta_min=0., power=1.0, begin=warmup, end=iters, by_epoch=False)]
    cfg.default_hooks.checkpoint = dict(type='mmsape.AtomicCheckpointHook', by_epoch=False,
                                        interval=iters, max_keep_ckpts=1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=max(1, iters // 4),
                                    log_metric_by_epoch=False)
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook', draw=False)
    cfg.custom_hooks = []
    cfg.randomness = dict(seed=seed)
    cfg.work_dir = work_dir
    cfg.experiment_name = osp.basename(work_dir)
    cfg.log_level = 'WARNING'
    cfg.data_root = data_root or osp.join(root, SEG_DATA_ROOT, SEG_DATA_FOLDER)
    metainfo = dict(classes=SEG_CLASSES, palette=FRAME_RELATION_SEG_PALETTE)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = cfg.data_root
        loader.dataset.metainfo = copy.deepcopy(metainfo)
    # mmseg's IoU summaries plus each class's IoU (for the class groups).
    cfg.val_evaluator = cfg.test_evaluator = dict(type='mmsape.PerClassIoUMetric',
                                                  iou_metrics=['mIoU'])
    return cfg


def train_seg(name: str, seed: int, iters: int, work_root: str, quick: bool,
              root: str, data_root: str) -> dict:
    """Train one encoding on the study's set; return its size sweep (mIoU, aAcc
    and ``IoU.<class>`` per size) and equivariance scores."""
    from mmsape.utils import build_runner, prepare_scope
    slug = name.replace(' ', '_').replace('+', 'p')
    work_dir = osp.join(work_root, f'{slug}_s{seed}')
    cfg = seg_config(name, seed, iters, work_dir, root, data_root)
    prepare_scope(cfg)
    start, start_cpu = time.time(), time.process_time()
    runner = build_runner(copy.deepcopy(cfg))
    runner.train()
    train_s, train_cpu_s = time.time() - start, time.process_time() - start_cpu
    checkpoint = osp.join(work_dir, f'iter_{iters}.pth')
    metrics = ['mIoU', 'aAcc'] + [f'IoU.{c}' for c in SEG_CLASSES]
    rows = evaluate_at_sizes(cfg, checkpoint, seg_sizes(quick),
                             work_dir=osp.join(work_dir, 'sweep'), metrics=metrics,
                             keep_ratio=True)
    model = runner.model.eval()
    loader = runner.build_dataloader(cfg.test_dataloader)
    patch = model.backbone.patch_size
    equi = score_model(model, loader, [(patch, patch), (2 * patch, 0)], 'circular',
                       num_images=4 if quick else 8, name=name)
    return dict(encoding=name, seed=seed, train_s=train_s, train_cpu_s=train_cpu_s,
                total_s=time.time() - start, total_cpu_s=time.process_time() - start_cpu,
                sweep=rows, equivariance=equi)
