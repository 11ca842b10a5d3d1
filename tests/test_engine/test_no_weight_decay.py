"""The optimizer constructors give weight_decay=0 exactly to what the model declares."""
import pytest
import torch
from torch import nn

from mmsape.engine import DeclaredDecayOptimWrapperConstructor, LayerDecayOptimWrapperConstructor
from mmsape.models import PosEncViT

TINY = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)
WEIGHT_DECAY = 0.05


class Segmentor(nn.Module):
    """A model without no_weight_decay, like mmdet's, mmseg's and mmpretrain's:
    the declaration is its backbone's."""

    def __init__(self, pos_encoding):
        super().__init__()
        self.backbone = PosEncViT(arch=TINY, img_size=32, patch_size=8,
                                  pos_encoding=pos_encoding)
        self.head = nn.Linear(32, 2)


def decay_by_name(model, optimizer):
    decay = {id(p): group['weight_decay'] for group in optimizer.param_groups
             for p in group['params']}
    return {name: decay[id(p)] for name, p in model.named_parameters()}


def build(constructor_cls, model, paramwise_cfg=None):
    constructor = constructor_cls(
        dict(type='OptimWrapper',
             optimizer=dict(type='AdamW', lr=1e-3, weight_decay=WEIGHT_DECAY)),
        paramwise_cfg=paramwise_cfg)
    return constructor(model).optimizer


CONSTRUCTORS = [
    (DeclaredDecayOptimWrapperConstructor, None),  # one param group, split
    (DeclaredDecayOptimWrapperConstructor, dict(custom_keys={'head': dict(lr_mult=0.1)})),
    (LayerDecayOptimWrapperConstructor, dict(layer_decay_rate=0.5)),
]
# Listed by hand from the model's structure.
NO_DECAY = {
    'sape2': (dict(type='SaPE2'),
              {'backbone.cls_token', 'backbone.pos_encoding.position_tables.0',
               'backbone.pos_encoding.position_tables.1'}),
    'sape2_decayed_tables': (dict(type='SaPE2', decay_tables=True), {'backbone.cls_token'}),
    'stack_ape_sape2': ([dict(type='LearnedAPE'), dict(type='SaPE2', layers=[1])],
                        {'backbone.cls_token', 'backbone.pos_encoding.encodings.0.pos_embed',
                         'backbone.pos_encoding.encodings.0.prefix_pos_embed',
                         'backbone.pos_encoding.encodings.1.position_tables.1'}),
}


@pytest.mark.parametrize('constructor_cls,paramwise_cfg', CONSTRUCTORS,
                         ids=['default', 'default-paramwise', 'layer-decay'])
@pytest.mark.parametrize('case', sorted(NO_DECAY))
def test_declared_parameters_and_only_they_get_no_decay(constructor_cls, paramwise_cfg, case):
    pos_encoding, expected = NO_DECAY[case]
    model = Segmentor(pos_encoding)
    optimizer = build(constructor_cls, model, paramwise_cfg)
    decay = decay_by_name(model, optimizer)
    assert {name for name, value in decay.items() if value == 0} == expected
    assert {value for name, value in decay.items() if name not in expected} == {WEIGHT_DECAY}
    # Every parameter is optimised once, with the options it had before.
    params = [p for group in optimizer.param_groups for p in group['params']]
    assert len(params) == len(set(map(id, params))) == len(list(model.parameters()))
    if paramwise_cfg and 'custom_keys' in paramwise_cfg:
        head_lrs = [g['lr'] for g in optimizer.param_groups
                    if any(p is model.head.weight for p in g['params'])]
        assert head_lrs == [pytest.approx(1e-4)]


def test_names_match_exactly_not_as_substrings():
    class Tables(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = nn.ParameterDict(
                {str(i): nn.Parameter(torch.zeros(2)) for i in (1, 10)})

        def no_weight_decay(self):
            return {'tables.1'}

    model = Tables()
    decay = decay_by_name(model, build(DeclaredDecayOptimWrapperConstructor, model))
    assert decay == {'tables.1': 0., 'tables.10': WEIGHT_DECAY}


def test_declared_name_that_is_not_a_parameter_is_refused():
    class Stale(nn.Linear):
        def no_weight_decay(self):
            return {'pos_embed'}

    with pytest.raises(ValueError, match='pos_embed.*not parameters'):
        build(DeclaredDecayOptimWrapperConstructor, Stale(2, 2))


@pytest.mark.parametrize('config,expected', [
    ('vit-s4-sape2_1xb128-400e_cifar10.py', {'backbone.cls_token'}),
    ('vit-s4-sape2-ape_1xb128-400e_cifar10.py',
     {'backbone.cls_token', 'backbone.pos_encoding.encodings.0.pos_embed',
      'backbone.pos_encoding.encodings.0.prefix_pos_embed'}),
])
def test_paper_configs_decay_the_tables_as_the_authors(config, expected):
    """The SaPE² paper configs follow the authors' code: only the APE table and
    the class token are excluded from weight decay, the SaPE² tables are not."""
    from pathlib import Path

    from mmengine.config import Config
    cfg = Config.fromfile(str(Path(__file__).resolve().parents[2] / 'configs/vit_cls' / config))
    backbone = dict(cfg.model.backbone, arch=TINY, img_size=32, patch_size=8)
    backbone.pop('type')
    model = nn.Module()
    model.backbone = PosEncViT(**backbone)
    optimizer = build(DeclaredDecayOptimWrapperConstructor, model)
    decay = decay_by_name(model, optimizer)
    assert {name for name, value in decay.items() if value == 0} == expected
    assert any('position_tables' in name for name in decay)
