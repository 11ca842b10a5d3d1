"""SimpleFPN: ViTDet's pyramid shapes and arithmetic, against hand-built layers
and mmdet's FPN for the extra levels."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from mmcv.ops import RoIAlign
from timm.layers import LayerNorm2d
from torch import nn

from mmsape.models import SimpleFPN


def reference_levels(in_channels: int, out_channels: int, scale_factors, norm: bool = True,
                     act=None) -> nn.ModuleList:
    """ViTDet's levels written out in plain torch layers, in the layout mmsape
    0.1's SimpleFPN had (one ``nn.Sequential`` per level): resampling, conv 1x1,
    norm, conv 3x3, norm (convs with a bias and no norm when ``norm`` is False;
    ``act`` after each conv's norm)."""
    def norm_layer(channels):
        return [LayerNorm2d(channels, eps=1e-6)] if norm else []

    def conv(cin, cout, kernel):
        layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not norm),
                  *norm_layer(cout)]
        return layers + ([act()] if act else [])

    levels = nn.ModuleList()
    for scale in scale_factors:
        channels = in_channels
        if scale == 4.0:
            resample = [nn.ConvTranspose2d(channels, channels // 2, 2, stride=2),
                        *(norm_layer(channels // 2) or [nn.Identity()]), nn.GELU(),
                        nn.ConvTranspose2d(channels // 2, channels // 4, 2, stride=2)]
            channels //= 4
        elif scale == 2.0:
            resample = [nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)]
            channels //= 2
        elif scale == 1.0:
            resample = []
        else:
            resample = [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        levels.append(nn.Sequential(*resample, *conv(channels, out_channels, 1),
                                    *conv(out_channels, out_channels, 3)))
    return levels


def randomize_norms(module: nn.Module) -> None:
    """Non-trivial affine parameters, so that a norm loaded into the wrong place shows."""
    for layer in module.modules():
        if isinstance(layer, nn.LayerNorm):
            nn.init.normal_(layer.weight, 1.0, 0.2)
            nn.init.normal_(layer.bias, 0.0, 0.2)


@pytest.mark.parametrize('hw', [(20, 30), (7, 9)])
def test_levels_and_strides(hw):
    neck = SimpleFPN(in_channels=16, out_channels=8)
    outs = neck((torch.rand(2, 16, *hw), ))
    height, width = hw
    expected = [(4 * height, 4 * width), (2 * height, 2 * width), (height, width),
                (-(-height // 2), -(-width // 2))]
    expected.append(tuple(-(-s // 2) for s in expected[-1]))
    assert [tuple(o.shape[-2:]) for o in outs] == expected
    assert all(o.shape[:2] == (2, 8) for o in outs)


def test_half_scale_level_is_max_pool_then_convs():
    """The 0.5x level equals the 1x level's conv stack applied to a max-pooled input."""
    torch.manual_seed(0)
    neck = SimpleFPN(in_channels=4, out_channels=4, scale_factors=(1.0, 0.5), num_outs=2)
    neck.lateral_convs[1].load_state_dict(neck.lateral_convs[0].state_dict())
    neck.fpn_convs[1].load_state_dict(neck.fpn_convs[0].state_dict())
    feature = torch.rand(1, 4, 6, 8)
    _, half = neck((feature, ))
    full_stack = nn.Sequential(neck.lateral_convs[0], neck.fpn_convs[0])
    torch.testing.assert_close(half, full_stack(F.max_pool2d(feature, 2)))


@pytest.mark.parametrize('hw', [(6, 10), (5, 7)])
def test_default_levels_equal_hand_built_layers(hw):
    """The default (LayerNorm2d, no activation) matches ViTDet's layers written
    out by hand; the hand-built weights load through the old ``stages.*`` keys,
    so checkpoints of mmsape 0.1 load into the new layout."""
    torch.manual_seed(0)
    scale_factors = (4.0, 2.0, 1.0, 0.5)
    reference = reference_levels(16, 8, scale_factors)
    randomize_norms(reference)
    neck = SimpleFPN(16, 8, scale_factors=scale_factors, num_outs=5)
    neck.load_state_dict({f'stages.{key}': value
                          for key, value in reference.state_dict().items()})
    feature = torch.randn(2, 16, *hw)
    outs = neck((feature, ))
    for level, expected in zip(outs, [stage(feature) for stage in reference]):
        torch.testing.assert_close(level, expected)
    torch.testing.assert_close(outs[4], F.max_pool2d(outs[3], 1, stride=2))


def test_norm_and_act_come_from_config():
    """norm_cfg=None gives convs with a bias, act_cfg adds the activation: the
    same arithmetic as hand-built Conv2d + ReLU layers."""
    torch.manual_seed(0)
    reference = reference_levels(8, 8, (2.0, 1.0), norm=False, act=nn.ReLU)
    neck = SimpleFPN(8, 8, scale_factors=(2.0, 1.0), num_outs=2, norm_cfg=None,
                     act_cfg=dict(type='ReLU'))
    assert neck.lateral_convs[0].conv.bias is not None and not neck.lateral_convs[0].with_norm
    neck.load_state_dict({f'stages.{key}': value
                          for key, value in reference.state_dict().items()})
    feature = torch.randn(1, 8, 5, 6)
    for level, stage in zip(neck((feature, )), reference):
        torch.testing.assert_close(level, stage(feature))
    group_norm = SimpleFPN(8, 8, norm_cfg=dict(type='GN', num_groups=2))
    assert isinstance(group_norm.resamplers[0][1], nn.GroupNorm)
    assert isinstance(group_norm.fpn_convs[3].norm, nn.GroupNorm)


@pytest.mark.parametrize('source', ['on_input', 'on_lateral', 'on_output'])
@pytest.mark.parametrize('relu_before_extra_convs', [False, True])
def test_extra_conv_levels_equal_mmdet_fpn(source, relu_before_extra_convs):
    """Levels made by extra convs are mmdet's FPN ones (RetinaNet's P6 / P7) fed
    with the last level's resampled map: FPN with one input level has no
    top-down path, so its P5 and extra levels must equal SimpleFPN's."""
    from mmdet.models.necks import FPN
    torch.manual_seed(0)
    norm_cfg = dict(type='mmsape.LN2d')
    neck = SimpleFPN(16, 8, scale_factors=(2.0, 1.0, 0.5), num_outs=5, add_extra_convs=source,
                     relu_before_extra_convs=relu_before_extra_convs, norm_cfg=norm_cfg)
    randomize_norms(neck)
    fpn = FPN([16], 8, num_outs=3, add_extra_convs=source,
              relu_before_extra_convs=relu_before_extra_convs, norm_cfg=norm_cfg)
    fpn.lateral_convs[0].load_state_dict(neck.lateral_convs[2].state_dict())
    fpn.fpn_convs[0].load_state_dict(neck.fpn_convs[2].state_dict())
    for index, extra in enumerate(neck.extra_convs):
        fpn.fpn_convs[1 + index].load_state_dict(extra.state_dict())
    feature = torch.randn(2, 16, 10, 14)
    outs = neck((feature, ))
    expected = fpn([neck.resamplers[2](feature)])
    assert [tuple(o.shape[-2:]) for o in outs[2:]] == [(5, 7), (3, 4), (2, 2)]
    for level, reference in zip(outs[2:], expected):
        torch.testing.assert_close(level, reference)


def test_add_extra_convs_true_means_on_input():
    neck = SimpleFPN(16, 8, scale_factors=(1.0, 0.5), num_outs=4, add_extra_convs=True)
    assert neck.add_extra_convs == 'on_input'
    assert [conv.conv.in_channels for conv in neck.extra_convs] == [16, 8]


@pytest.mark.parametrize('norm_cfg', [dict(type='mmsape.LN2d', eps=1e-6), None])
def test_levels_feed_mmcv_roi_align_correctly(norm_cfg):
    """The RoI heads read the levels through mmcv's RoIAlign, whose kernels take
    the buffer as contiguous NCHW: its features must equal torchvision's
    (stride-aware) RoIAlign on every level."""
    torch.manual_seed(0)
    neck = SimpleFPN(in_channels=16, out_channels=8, norm_cfg=norm_cfg)
    rois = torch.tensor([[0, 3., 5., 40., 30.], [1, 20., 2., 60., 45.], [1, 0., 0., 70., 50.]])
    for stride, level in zip((4, 8, 16, 32, 64), neck((torch.rand(2, 16, 5, 7), ))):
        assert level.is_contiguous()
        ours = RoIAlign(7, 1 / stride, sampling_ratio=2, aligned=True)(level, rois)
        reference = torchvision.ops.roi_align(level.detach().contiguous(), rois, 7, 1 / stride,
                                              sampling_ratio=2, aligned=True)
        torch.testing.assert_close(ours, reference)


def test_bad_options_and_inputs():
    with pytest.raises(ValueError, match='num_outs'):
        SimpleFPN(8, 8, num_outs=3)
    with pytest.raises(ValueError, match='scale_factors'):
        SimpleFPN(8, 8, scale_factors=(3.0, ), num_outs=1)
    with pytest.raises(ValueError, match="out_type='featmap'"):
        SimpleFPN(8, 8)((torch.rand(1, 5, 8),))
    with pytest.raises(ValueError, match="add_extra_convs='on_inputs'.*'on_input'"):
        SimpleFPN(8, 8, add_extra_convs='on_inputs')
