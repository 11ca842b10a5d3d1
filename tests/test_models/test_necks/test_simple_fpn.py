"""SimpleFPN: ViTDet's pyramid shapes and arithmetic."""
import pytest
import torch
import torch.nn.functional as F

from mmsape.models import SimpleFPN


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
    """The 0.5x level equals the 1x/1x conv stack applied to a max-pooled input."""
    torch.manual_seed(0)
    neck = SimpleFPN(in_channels=4, out_channels=4, scale_factors=(1.0, 0.5), num_outs=2)
    torch.nn.Sequential(*neck.stages[1][1:]).load_state_dict(neck.stages[0].state_dict())
    feature = torch.rand(1, 4, 6, 8)
    _, half = neck((feature, ))
    torch.testing.assert_close(half, neck.stages[0](F.max_pool2d(feature, 2)))


def test_bad_options_and_inputs():
    with pytest.raises(ValueError, match='num_outs'):
        SimpleFPN(8, 8, num_outs=3)
    with pytest.raises(ValueError, match='scale_factors'):
        SimpleFPN(8, 8, scale_factors=(3.0, ), num_outs=1)
    with pytest.raises(ValueError, match="out_type='featmap'"):
        SimpleFPN(8, 8)((torch.rand(1, 5, 8),))
