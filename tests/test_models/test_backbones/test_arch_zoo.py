"""Arch names: each means one network, the same as in mmpretrain where both have it."""
import pytest
from mmpretrain.models.backbones import VisionTransformer as MMPretrainViT

from mmsape.models import PosEncViT

# DeiT (Touvron et al., ICML 2021), Table 1.
DEIT = {'deit-tiny': (192, 12, 3), 'deit-small': (384, 12, 6), 'deit-base': (768, 12, 12)}


def test_deit_names_are_deit():
    for name, (dims, layers, heads) in DEIT.items():
        assert PosEncViT.arch_zoo[name] == dict(embed_dims=dims, num_layers=layers,
                                                num_heads=heads, feedforward_channels=4 * dims)


def test_names_shared_with_mmpretrain_mean_its_network():
    shared = set(PosEncViT.arch_zoo) & set(MMPretrainViT.arch_zoo)
    assert {'deit-small', 'base', 'large'} <= shared
    for name in shared:
        assert PosEncViT.arch_zoo[name] == MMPretrainViT.arch_zoo[name], name
    # what 'small' would have meant in each
    assert MMPretrainViT.arch_zoo['small'] != PosEncViT.arch_zoo['deit-small']


@pytest.mark.parametrize('name, replacement', [('small', 'deit-small'), ('S', 'deit-s'),
                                               ('tiny', 'deit-tiny'), ('t', 'deit-t')])
def test_ambiguous_names_name_their_replacement(name, replacement):
    with pytest.raises(ValueError, match=rf"arch {name!r} is ambiguous.*arch={replacement!r} "
                                         r'for the same network as before'):
        PosEncViT(arch=name)
    assert PosEncViT.removed_archs[name.lower()] == replacement
