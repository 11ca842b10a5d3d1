"""The study's segmentation part: the demo UPerNet trained through the real
mmseg machinery with each encoding, then evaluated at other sizes
(:func:`~mmsape.analysis.resolution.evaluate_at_sizes`) and scored for
equivariance (see :mod:`mmsape.analysis.pe_study`)."""
import copy
import os.path as osp
import time

from mmengine.config import Config

from mmsape.analysis.encodings import COMPARED_ENCODINGS
from mmsape.analysis.equivariance import score_model
from mmsape.analysis.resolution import describe_size, evaluate_at_sizes
from mmsape.utils.config_entries import find_entry

SEG_ENCODINGS = ('APE', 'PEG', 'SaPE2 query', 'none')
SEG_BASE = (80, 160)  # (H, W) the segmenter is trained at (demo images are ~1:2..2:1)
SEG_EVAL_SIZES = [(40, 80), (80, 160), (120, 240), (80, 80), (160, 80)]
#: The demo config and data, relative to the repository root.
SEG_CONFIG = 'configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py'
SEG_DATA_ROOT = 'data/demo/ade/ADEChallengeData2016'


def seg_config(name: str, seed: int, iters: int, work_dir: str, root: str) -> Config:
    """The demo config with encoding ``name``, trained at :data:`SEG_BASE` for
    ``iters`` iterations; ``root`` is the repository root."""
    cfg = Config.fromfile(osp.join(root, SEG_CONFIG))
    pos_encoding, extra = COMPARED_ENCODINGS[name]
    cfg.model.backbone.pos_encoding = copy.deepcopy(pos_encoding)
    cfg.model.backbone.update(extra)
    cfg.model.backbone.img_size = SEG_BASE
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
    cfg.data_root = osp.join(root, SEG_DATA_ROOT)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = cfg.data_root
    return cfg


def train_seg(name: str, seed: int, iters: int, work_root: str, quick: bool,
              root: str) -> dict:
    """Train one encoding on the demo set; return its size sweep and
    equivariance scores."""
    from mmsape.utils import build_runner, prepare_scope
    slug = name.replace(' ', '_').replace('+', 'p')
    work_dir = osp.join(work_root, f'{slug}_s{seed}')
    cfg = seg_config(name, seed, iters, work_dir, root)
    prepare_scope(cfg)
    start = time.time()
    runner = build_runner(copy.deepcopy(cfg))
    runner.train()
    train_s = time.time() - start
    checkpoint = osp.join(work_dir, f'iter_{iters}.pth')
    sizes = [describe_size(h, w, SEG_BASE) for h, w in
             (SEG_EVAL_SIZES[:2] if quick else SEG_EVAL_SIZES)]
    rows = evaluate_at_sizes(cfg, checkpoint, sizes, work_dir=osp.join(work_dir, 'sweep'),
                             metrics=['mIoU', 'aAcc'])
    model = runner.model.eval()
    loader = runner.build_dataloader(cfg.test_dataloader)
    patch = model.backbone.patch_size
    equi = score_model(model, loader, [(patch, patch), (2 * patch, 0)], 'circular',
                       num_images=4 if quick else 8, name=name)
    return dict(encoding=name, seed=seed, train_s=train_s, sweep=rows, equivariance=equi)
