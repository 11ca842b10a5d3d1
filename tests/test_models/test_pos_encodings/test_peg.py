"""Tests of CPVT's PEG against timm's PosConv and a hand-written masked conv."""
import pytest
import torch
from timm.models.twins import PosConv

from mmsape.models.pos_encodings import PEG, build_pos_encoding
from mmsape.models.pos_encodings.base import TokenGrid

EMBED_DIMS = 8


def backbone_args(num_prefix_tokens=1, num_layers=6):
    return dict(embed_dims=EMBED_DIMS, num_heads=2, num_layers=num_layers, base_grid=(4, 4),
                num_prefix_tokens=num_prefix_tokens)


@pytest.mark.parametrize('hw', [(5, 5), (3, 7), (7, 3), (1, 6), (6, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1, 2])
def test_peg_equals_timm_posconv(hw, num_prefix):
    torch.manual_seed(0)
    peg = PEG(**backbone_args(num_prefix_tokens=num_prefix))
    reference = PosConv(EMBED_DIMS, EMBED_DIMS)
    reference.proj[0].load_state_dict(peg.convs['0'].state_dict())
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    x = torch.randn(2, grid.num_tokens, EMBED_DIMS)
    out = peg.after_block(0, x, grid)
    assert torch.equal(out[:, :num_prefix], x[:, :num_prefix])
    torch.testing.assert_close(out[:, num_prefix:], reference(x[:, num_prefix:], hw))


def test_peg_one_conv_per_listed_block():
    peg = PEG(**backbone_args(), after_blocks=(0, 1, 2, 3, 4))
    assert sorted(peg.convs) == ['0', '1', '2', '3', '4']
    grid = TokenGrid(3, 4, num_prefix=1)
    x = torch.randn(2, grid.num_tokens, EMBED_DIMS)
    assert torch.equal(peg.after_block(5, x, grid), x)  # not listed: identity
    outs = [peg.after_block(i, x, grid) for i in range(5)]
    assert not torch.allclose(outs[0], outs[1])  # separate weights

    last = PEG(**backbone_args(num_layers=6), after_blocks=(-1, ))
    assert last.after_blocks == (5, )
    assert PEG(**backbone_args(), after_blocks=2).after_blocks == (2, )


def naive_masked_peg(x_map, pad_mask, weight, bias):
    """Loop version of the detection PEG on one (C, H, W) map, float64."""
    channels, height, width = x_map.shape
    zero_filled = x_map.masked_fill(pad_mask, 0.)
    out = x_map.clone()
    for c in range(channels):
        for r in range(height):
            for col in range(width):
                if pad_mask[r, col]:
                    continue  # padding keeps its value
                total = bias[c].item()
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, col + dc
                        if 0 <= rr < height and 0 <= cc < width:
                            total += weight[c, 0, dr + 1, dc + 1].item() * zero_filled[c, rr, cc]
                out[c, r, col] = x_map[c, r, col] + total
    return out


def test_peg_masked_padding_hand_checked():
    torch.manual_seed(0)
    peg = PEG(**backbone_args(num_prefix_tokens=1)).double()
    height, width = 4, 5
    pad_mask = torch.zeros(2, height, width, dtype=torch.bool)
    pad_mask[0, 3:, :] = True  # image 0: 3x5 padded to 4x5 at the bottom
    pad_mask[1, :, 3:] = True  # image 1: 4x3 padded to 4x5 on the right
    grid = TokenGrid(height, width, num_prefix=1, pad_mask=pad_mask)
    x = torch.randn(2, grid.num_tokens, EMBED_DIMS, dtype=torch.float64)
    x[:, 1:] += 5.  # padding that leaked into the conv would show
    out = peg.after_block(0, x, grid)

    assert torch.equal(out[:, :1], x[:, :1])
    patches_in = x[:, 1:].view(2, height, width, EMBED_DIMS)
    patches_out = out[:, 1:].view(2, height, width, EMBED_DIMS)
    assert torch.equal(patches_out[pad_mask], patches_in[pad_mask])
    conv = peg.convs['0']
    for b in range(2):
        expected = naive_masked_peg(patches_in[b].permute(2, 0, 1), pad_mask[b],
                                    conv.weight.detach(), conv.bias.detach())
        torch.testing.assert_close(patches_out[b].permute(2, 0, 1), expected)

    # Image 0 alone (3x5, no padding) gives the same image tokens: padding is invisible.
    alone = peg.after_block(0, torch.cat([x[:1, :1], x[:1, 1:16]], dim=1),
                            TokenGrid(3, 5, num_prefix=1))
    torch.testing.assert_close(patches_out[0, :3].reshape(1, 15, -1), alone[:, 1:])


def test_peg_without_mask_padding_treats_padding_as_image():
    torch.manual_seed(0)
    peg = PEG(**backbone_args(), mask_padding=False)
    pad_mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    pad_mask[:, 2] = True
    x = torch.randn(1, 1 + 9, EMBED_DIMS)
    masked_grid = TokenGrid(3, 3, num_prefix=1, pad_mask=pad_mask)
    torch.testing.assert_close(peg.after_block(0, x, masked_grid),
                               peg.after_block(0, x, TokenGrid(3, 3, num_prefix=1)))


def test_peg_check_compatible():
    PEG(**backbone_args()).check_compatible(window_size=7, with_cls_token=True)
    PEG(**backbone_args(), mask_padding=False).check_compatible(window_size=0,
                                                                with_cls_token=False)
    with pytest.raises(ValueError, match='mask_padding=True'):
        PEG(**backbone_args(), mask_padding=False).check_compatible(window_size=7,
                                                                    with_cls_token=True)


def test_peg_bad_options():
    with pytest.raises(ValueError, match='kernel_size=4'):
        PEG(**backbone_args(), kernel_size=4)
    with pytest.raises(ValueError, match='after_blocks'):
        PEG(**backbone_args(num_layers=4), after_blocks=(0, 4))
    with pytest.raises(ValueError, match='after_blocks'):
        PEG(**backbone_args(), after_blocks=())


def test_peg_kernel_size_keeps_grid():
    peg = PEG(**backbone_args(), kernel_size=5)
    assert peg.convs['0'].padding == (2, 2) and peg.convs['0'].groups == EMBED_DIMS
    x = torch.randn(1, 1 + 2 * 3, EMBED_DIMS)
    assert peg.after_block(0, x, TokenGrid(2, 3, num_prefix=1)).shape == x.shape


def test_peg_no_weight_decay_layer_index_and_builder():
    peg = build_pos_encoding(dict(type='PEG', after_blocks=(0, 3)), **backbone_args())
    assert isinstance(peg, PEG) and not peg.acts_in_attention
    names = set(dict(peg.named_parameters()))
    assert names == {'convs.0.weight', 'convs.0.bias', 'convs.3.weight', 'convs.3.bias'}
    assert peg.no_weight_decay() == names
    assert peg.layer_index_of('convs.3.weight') == 3
    assert peg.layer_index_of('something.else') is None


@pytest.mark.parametrize('hw', [(4, 4), (3, 5), (1, 6), (6, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1, 3])
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('with_pad_mask', [False, True])
def test_forward_backward_any_grid(hw, num_prefix, batch, with_pad_mask):
    torch.manual_seed(0)
    peg = PEG(**backbone_args(num_prefix_tokens=num_prefix), after_blocks=(0, 1))
    pad_mask = None
    if with_pad_mask:
        pad_mask = torch.zeros(batch, *hw, dtype=torch.bool)
        pad_mask[:, -1, -1] = True
    grid = TokenGrid(*hw, num_prefix=num_prefix, pad_mask=pad_mask)
    x = torch.randn(batch, grid.num_tokens, EMBED_DIMS, requires_grad=True)
    out = peg.after_block(1, peg.after_block(0, x, grid), grid)
    assert out.shape == x.shape and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, param in peg.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
