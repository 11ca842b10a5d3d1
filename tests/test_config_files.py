"""The config files: every one loads, the detectors share one backbone definition,
and RetinaNet's pyramid levels are the strides its anchors are laid out for."""
import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(path.relative_to(ROOT)) for path in
                 [*ROOT.glob('configs/*/*.py'), *ROOT.glob('projects/*/configs/*.py')]
                 if '_base_' not in path.parts)
DETECTORS = [path for path in CONFIGS
             if path.startswith(('configs/mask_rcnn/', 'configs/retinanet/'))]
VITDET_BACKBONE = 'configs/_base_/models/vit-s16_vitdet.py'


@pytest.mark.parametrize('path', CONFIGS)
def test_config_loads(path):
    cfg = Config.fromfile(str(ROOT / path))
    assert cfg.model.backbone.type == 'mmsape.PosEncViT'


@pytest.mark.parametrize('path', DETECTORS)
def test_detectors_take_the_shared_backbone(path):
    """Each detector's backbone is the shared windowed ViT-S/16 with only its
    training size and position encoding set."""
    shared = Config.fromfile(str(ROOT / VITDET_BACKBONE)).vitdet_backbone.to_dict()
    backbone = Config.fromfile(str(ROOT / path)).model.backbone.to_dict()
    assert backbone.pop('img_size') and 'img_size' not in shared
    backbone.pop('pos_encoding')
    shared.pop('pos_encoding')
    assert backbone == shared


def test_retinanet_levels_are_its_anchor_strides():
    """P3-P5 resampled from the stride-16 map, P6 and P7 by stride-2 convs (not
    max-pooling), at the strides of RetinaNet's anchor generator."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(ROOT / 'configs/retinanet/retinanet_vit-s16_simplefpn_1x_coco.py'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(model_cfg).eval()
    assert len(model.neck.extra_convs) == 2
    images = torch.rand(1, 3, 256, 384)
    with torch.no_grad():
        levels = model.neck(model.backbone(images))
    strides = [(256 // level.shape[-2], 384 // level.shape[-1]) for level in levels]
    assert strides == [tuple(stride) for stride in model.bbox_head.prior_generator.strides]
    assert strides == [(8, 8), (16, 16), (32, 32), (64, 64), (128, 128)]
