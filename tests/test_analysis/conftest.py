"""Tiny classifier checkpoints on the demo data for the analysis tools."""
import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmsape.testing.demo_data import ensure_demo_data

ROOT = Path(__file__).resolve().parents[2]
CLS_CONFIG = ROOT / 'configs' / 'demo' / 'vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet.py'


def tiny_cls_config(pos_encoding: dict, work_dir: Path) -> Config:
    """The demo classifier shrunk to 2 blocks of width 24 (test-sized)."""
    cfg = Config.fromfile(str(CLS_CONFIG))
    cfg.model.backbone.arch = dict(embed_dims=24, num_layers=2, num_heads=2,
                                   feedforward_channels=48)
    cfg.model.backbone.pos_encoding = pos_encoding
    cfg.model.head.in_channels = 24
    root = str(ROOT / 'data' / 'demo' / 'imagenet')
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
    cfg.work_dir = str(work_dir)
    return cfg


def save_tiny_checkpoint(cfg: Config, path: Path, ape_std: float = 0.) -> None:
    """Random weights of ``cfg.model``; ``ape_std`` > 0 gives the APE table that
    scale, so that it dominates position like a trained table does."""
    from mmengine.registry import DefaultScope

    from mmsape.utils import prepare_scope
    prepare_scope(cfg)
    from mmpretrain.registry import MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(copy.deepcopy(cfg.model))
    state = model.state_dict()
    if ape_std:
        key = 'backbone.pos_encoding.pos_embed'
        state[key] = torch.randn_like(state[key]) * ape_std
    torch.save({'state_dict': state, 'meta': {}}, path)


@pytest.fixture(scope='session')
def tiny_models(tmp_path_factory) -> dict:
    """{'none': (config, ckpt), 'ape': (config, ckpt)} written to a temp folder."""
    ensure_demo_data(ROOT / 'data' / 'demo')
    folder = tmp_path_factory.mktemp('tiny_models')
    models = {}
    for name, pos_encoding, ape_std in (('none', dict(type='NoPositionEncoding'), 0.),
                                        ('ape', dict(type='LearnedAPE'), 1.)):
        cfg = tiny_cls_config(pos_encoding, folder / f'work_{name}')
        config_path, ckpt_path = folder / f'{name}.py', folder / f'{name}.pth'
        cfg.dump(str(config_path))
        save_tiny_checkpoint(cfg, ckpt_path, ape_std)
        models[name] = (str(config_path), str(ckpt_path))
    return models
