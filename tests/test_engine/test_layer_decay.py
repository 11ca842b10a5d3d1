"""Layer-wise lr decay reaches detectors / segmentors through their backbone."""
import pytest
from torch import nn

from mmsape.engine import LayerDecayOptimWrapperConstructor

from builders import tiny_vit


class Detector(nn.Module):
    """A model without get_layer_depth, like mmdet's and mmseg's."""

    def __init__(self):
        super().__init__()
        self.backbone = tiny_vit('SaPE2', train=True)
        self.head = nn.Linear(32, 2)


def test_lr_follows_depth():
    constructor = LayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.1)),
        paramwise_cfg=dict(layer_decay_rate=0.5))
    optimizer = constructor(Detector()).optimizer
    lr = {g['param_name']: g['lr'] for g in optimizer.param_groups}
    # depth d of 4 (stem 0, blocks 1-2, rest 3): lr = 0.5 ** (4 - d - 1)
    assert lr['backbone.patch_embed.proj.weight'] == pytest.approx(0.125)
    assert lr['backbone.blocks.0.attn.qkv.weight'] == pytest.approx(0.25)
    assert lr['backbone.blocks.1.mlp.fc1.weight'] == pytest.approx(0.5)
    assert lr['head.weight'] == pytest.approx(1.0)
    # SaPE2's per-layer tables decay with the block they belong to
    sape_lrs = {v for k, v in lr.items() if k.startswith('backbone.pos_encoding.')}
    assert sape_lrs <= {0.25, 0.5} and sape_lrs


def test_model_without_vit_is_refused():
    constructor = LayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
        paramwise_cfg=dict(layer_decay_rate=0.5))
    with pytest.raises(TypeError, match='get_layer_depth'):
        constructor(nn.Sequential(nn.Linear(2, 2)))
