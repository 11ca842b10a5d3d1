"""Incompatible options fail when the model is BUILT, with a message naming them.

The backbone's own unit tests build :class:`PosEncViT` directly; these build
the whole model of the real demo configs through the registry of the task's
toolbox (mmdet / mmseg / mmpretrain ``MODELS.build``), after changing options
the way ``--cfg-options`` does (``Config.merge_from_dict``), so that the error
has to come out of MMEngine's build machinery with its message intact. One
test also runs ``tools/train.py`` to show the error stops the run before any
data is read.
"""
import copy
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmsape.models.pos_encodings import registered_pos_encodings
from mmsape.testing.demo_data import ensure_demo_data

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    'mmpretrain': 'configs/demo/vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet.py',
    'mmseg': 'configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py',
    # ViTDet style: window attention, no class token, global blocks (1, 3).
    'mmdet': 'configs/demo/mask-rcnn_vit-96d4-p8-sape2_simplefpn_1xb4-800iter_demo-coco.py',
}


def load_model_cfg(scope: str) -> Config:
    cfg = Config.fromfile(str(ROOT / CONFIGS[scope]))
    assert cfg.default_scope == scope
    return cfg


def build_model(scope: str, cfg: Config):
    """``MODELS.build(cfg.model)`` with the toolbox's registry and scope."""
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(copy.deepcopy(cfg.model))


@pytest.mark.parametrize('scope', sorted(CONFIGS))
def test_unmodified_demo_models_build(scope):
    """Control: every failure below is caused by the changed option alone."""
    model = build_model(scope, load_model_cfg(scope))
    assert type(model.backbone).__name__ == 'PosEncViT'


# (toolbox, --cfg-options, exception type, pattern the message must contain)
INCOMPATIBLE = {
    'peg_windows_without_mask': (
        'mmdet', {'model.backbone.pos_encoding': dict(type='mmsape.PEG', mask_padding=False)},
        ValueError, r'PEG with window attention needs mask_padding=True'),
    'rope_head_dim_not_multiple_of_4': (
        # 96 channels / 16 heads = 6 per head.
        'mmseg', {'model.backbone.arch.num_heads': 16,
                  'model.backbone.pos_encoding': dict(type='RoPE2D')},
        ValueError, r'RoPE2D needs a head dim divisible by 4.*num_heads=16 = 6'),
    'out_indices_beyond_depth': (
        'mmseg', {'model.backbone.out_indices': (0, 1, 2, 4)},
        ValueError, r'out_indices contains 4, but the backbone has 4 blocks'),
    'negative_out_index_beyond_depth': (
        'mmdet', {'model.backbone.out_indices': (-5, )},
        ValueError, r'out_indices contains -5'),
    'cls_token_output_without_cls_token': (
        'mmpretrain', {'model.backbone.with_cls_token': False},
        ValueError, r"out_type='cls_token' needs with_cls_token=True"),
    'window_attention_with_cls_token': (
        'mmdet', {'model.backbone.with_cls_token': True},
        ValueError, r'window_size > 0.*with_cls_token=False'),
    'window_attention_with_register_tokens': (
        'mmdet', {'model.backbone.num_register_tokens': 2},
        ValueError, r'num_register_tokens=0'),
    'global_attn_index_beyond_depth': (
        'mmdet', {'model.backbone.global_attn_indexes': (1, 7)},
        ValueError, r'global_attn_indexes contains 7'),
    'peg_after_missing_block': (
        'mmseg', {'model.backbone.pos_encoding': dict(type='PEG', after_blocks=(0, 9))},
        ValueError, r'after_blocks contains 9'),
    'sape2_layer_beyond_depth': (
        'mmpretrain', {'model.backbone.pos_encoding.layers': (4, )},
        ValueError, r'layers contains 4'),
    'sape2_fused_needs_squared_distance': (
        'mmpretrain', {'model.backbone.pos_encoding.impl': 'fused'},
        ValueError, r"impl='fused'.*distance='l2'"),
    'two_encodings_inside_attention': (
        'mmseg', {'model.backbone.pos_encoding': [dict(type='SaPE2'), dict(type='RoPE2D')]},
        ValueError, r'several encodings that act inside attention \(SaPE2, RoPE2D\)'),
    'frozen_stages_beyond_depth': (
        'mmseg', {'model.backbone.frozen_stages': 5},
        ValueError, r'frozen_stages=5 exceeds the 4 blocks'),
    'unknown_out_type': (
        'mmpretrain', {'model.backbone.out_type': 'tokens'},
        ValueError, r"Unsupported out_type 'tokens'"),
}


@pytest.mark.parametrize('case', sorted(INCOMPATIBLE))
def test_incompatible_options_fail_at_build_time(case):
    scope, options, error, pattern = INCOMPATIBLE[case]
    cfg = load_model_cfg(scope)
    cfg.merge_from_dict(options)
    with pytest.raises(error) as info:
        build_model(scope, cfg)
    assert re.search(pattern, str(info.value)), str(info.value)


@pytest.mark.parametrize('scope', sorted(CONFIGS))
@pytest.mark.parametrize('name', ['Fourier', 'mmsape.Fourier'])
def test_unknown_pos_encoding_lists_every_registered_one(scope, name):
    cfg = load_model_cfg(scope)
    cfg.merge_from_dict({'model.backbone.pos_encoding.type': name})
    with pytest.raises(KeyError) as info:
        build_model(scope, cfg)
    message = str(info.value)
    assert f'Unknown position encoding {name!r}' in message
    registered = registered_pos_encodings()
    assert {'SaPE2', 'LearnedAPE', 'PEG', 'RoPE2D', 'CoPE1D'} <= set(registered)
    listed = re.search(r'Registered position encodings: ([\w, ]+)\.', message)
    assert listed and listed.group(1).split(', ') == registered


def test_options_left_from_another_encoding_are_named():
    """Changing only ``pos_encoding.type`` keeps the old encoding's options."""
    cfg = load_model_cfg('mmpretrain')
    cfg.merge_from_dict({'model.backbone.pos_encoding':
                         dict(type='mmsape.SaPE2', num_positions=8, distance='rms')})
    assert type(build_model('mmpretrain', cfg).backbone.pos_encoding).__name__ == 'SaPE2'
    cfg.merge_from_dict({'model.backbone.pos_encoding.type': 'RoPE2D'})
    with pytest.raises(TypeError, match=r'RoPE2D does not take the option\(s\) distance, '
                                        r'num_positions'):
        build_model('mmpretrain', cfg)


def test_train_tool_stops_before_training(tmp_path):
    """Through ``tools/train.py``: the run fails while building, before any
    iteration, and the option's message reaches the user."""
    ensure_demo_data(ROOT / 'data' / 'demo')  # the tool checks the data is there first
    result = subprocess.run(
        [sys.executable, 'tools/train.py', CONFIGS['mmseg'], '--work-dir', str(tmp_path),
         '--cfg-options', 'model.backbone.out_indices=[0,1,2,9]'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert 'out_indices contains 9, but the backbone has 4 blocks' in output
    assert 'Iter(train)' not in output
    assert not list(tmp_path.rglob('*.pth'))
