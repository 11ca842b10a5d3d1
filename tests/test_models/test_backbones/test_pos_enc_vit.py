"""PosEncViT: the ViT body against timm, outputs, windows, options, checkpoints."""
import re
from functools import partial

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mmsape.models import PosEncViT
from mmsape.models.backbones.pos_enc_vit import merge_windows, partition_windows
from mmsape.models.pos_encodings import TokenGrid, registered_pos_encodings

from builders import tiny_vit


def timm_vit(**kwargs) -> VisionTransformer:
    """timm's ViT with :func:`tiny_vit`'s arch, resampling its APE to any input size."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.,
                num_classes=0, dynamic_img_size=True, dynamic_img_pad=True)
    args.update(kwargs)
    return VisionTransformer(**args).eval()


mmsape_vit = partial(tiny_vit, out_type='raw')


def load_from_timm(model: PosEncViT, reference: VisionTransformer, tmp_path, keys=None):
    """Load timm's weights through the pretrained path (key conversion included)."""
    state = reference.state_dict() if keys is None else keys(reference.state_dict())
    path = tmp_path / 'timm_vit.pth'
    torch.save(state, path)
    model.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    model.init_weights()
    return model


@pytest.mark.parametrize('size', [(32, 32), (40, 24), (37, 53)])
@pytest.mark.parametrize('layer_scale', [0., 0.1])
def test_matches_timm_with_learned_ape(tmp_path, size, layer_scale):
    torch.manual_seed(0)
    reference = timm_vit(init_values=layer_scale or None)
    for param in reference.parameters():  # non-trivial values everywhere
        param.data.normal_(0, 0.2)
    model = load_from_timm(mmsape_vit(layer_scale_init_value=layer_scale), reference,
                           tmp_path)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference.forward_features(images)
        (actual, ) = model(images)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_loads_mmpretrain_style_keys(tmp_path):
    """A checkpoint with mmpretrain's names (and a classifier head) gives the
    same network as timm's names."""
    torch.manual_seed(0)
    reference = timm_vit()

    def to_mmpretrain(state):
        renames = [(r'^patch_embed\.proj\.', 'patch_embed.projection.'),
                   (r'^blocks\.(\d+)\.norm1\.', r'layers.\1.ln1.'),
                   (r'^blocks\.(\d+)\.norm2\.', r'layers.\1.ln2.'),
                   (r'^blocks\.(\d+)\.attn\.', r'layers.\1.attn.'),
                   (r'^blocks\.(\d+)\.mlp\.fc1\.', r'layers.\1.ffn.layers.0.0.'),
                   (r'^blocks\.(\d+)\.mlp\.fc2\.', r'layers.\1.ffn.layers.1.'),
                   (r'^norm\.', 'ln1.')]
        out = {}
        for key, value in state.items():
            for pattern, repl in renames:
                key = re.sub(pattern, repl, key)
            out['backbone.' + key] = value
        out['head.layers.head.weight'] = torch.zeros(10, 32)
        return {'state_dict': out, 'meta': {}}

    model = load_from_timm(mmsape_vit(), reference, tmp_path, keys=to_mmpretrain)
    images = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0], reference.forward_features(images))


def test_pretrained_report_lists_unused_and_resized(tmp_path, capsys):
    reference = timm_vit(img_size=64)  # 8x8 table, model wants 4x4
    model = mmsape_vit(with_cls_token=True)
    path = tmp_path / 'vit.pth'
    state = reference.state_dict()
    state['head.weight'] = torch.zeros(3, 32)
    torch.save(state, path)
    from mmsape.models.utils import load_vit_pretrained
    report = load_vit_pretrained(model, str(path))
    assert 'head.weight' in report['unexpected']
    assert [key for key, *_ in report['resized']] == ['pos_encoding.pos_embed']
    assert report['missing'] == []


@pytest.mark.parametrize('out_type, shape', [('raw', (2, 1 + 5 * 7, 32)), ('cls_token', (2, 32)),
                                             ('featmap', (2, 32, 5, 7)),
                                             ('avg_featmap', (2, 32))])
def test_out_types_on_non_divisible_input(out_type, shape):
    model = mmsape_vit(out_type=out_type, out_indices=(0, -1))
    outs = model(torch.rand(2, 3, 33, 50))  # pads to 40 x 56 -> 5 x 7 grid
    assert len(outs) == 2
    assert all(tuple(out.shape) == shape for out in outs)


def test_avg_featmap_ignores_batch_padding():
    """GAP over image tokens only: padding an image (with a mask) changes nothing."""
    torch.manual_seed(0)
    model = mmsape_vit(out_type='avg_featmap', pos_encoding=dict(type='NoPositionEncoding'),
                       with_cls_token=False)
    # Without position encoding and with global attention, padded tokens still
    # take part in attention, so compare against an explicit masked mean.
    images = torch.rand(1, 3, 32, 48)
    pad = torch.zeros(1, 32, 48, dtype=torch.bool)
    pad[:, :, 24:] = True
    (pooled, ) = model(images, pad_mask=pad)
    model.out_type = 'featmap'
    (feature, ) = model(images)
    torch.testing.assert_close(pooled, feature[..., :3].mean(dim=(2, 3)))


def test_window_partition_round_trip_and_mask():
    tokens = torch.randn(2, 5 * 7, 3)
    grid = TokenGrid(5, 7, 0)
    windows, window_grid, padded_hw = partition_windows(tokens, grid, 4)
    assert windows.shape == (2 * 2 * 2, 16, 3) and padded_hw == (8, 8)
    assert window_grid.pad_mask.sum() == 2 * (64 - 35)
    torch.testing.assert_close(merge_windows(windows, grid, padded_hw, 4), tokens)
    # first window of the first image holds grid rows 0-3, columns 0-3
    expected = tokens[0].reshape(5, 7, 3)[:4, :4].reshape(16, 3)
    torch.testing.assert_close(windows[0], expected)


def test_window_covering_whole_grid_equals_global_attention():
    torch.manual_seed(0)
    kwargs = dict(with_cls_token=False, out_type='featmap',
                  pos_encoding=dict(type='NoPositionEncoding'))
    windowed = mmsape_vit(window_size=4, **kwargs)
    plain = mmsape_vit(**kwargs)
    plain.load_state_dict(windowed.state_dict())
    images = torch.rand(2, 3, 32, 32)  # 4 x 4 grid = one window
    torch.testing.assert_close(windowed(images)[0], plain(images)[0])
    # a smaller window must change the result (it really restricts attention)
    small = mmsape_vit(window_size=2, **kwargs)
    small.load_state_dict(windowed.state_dict())
    assert not torch.allclose(small(images)[0], plain(images)[0], atol=1e-4)


def test_global_attn_indexes_keep_some_blocks_global():
    model = mmsape_vit(window_size=2, global_attn_indexes=(-1, ), with_cls_token=False,
                       out_type='featmap')
    assert [block.window_size for block in model.blocks] == [2, 0]


@pytest.mark.parametrize('kwargs, message', [
    (dict(out_type='tokens'), 'out_type'),
    (dict(out_type='cls_token', with_cls_token=False), 'with_cls_token'),
    (dict(out_indices=(5, )), 'out_indices'),
    (dict(window_size=4), 'with_cls_token=False'),
    (dict(arch='giant'), 'arch'),
    (dict(arch=dict(embed_dims=30, num_layers=1, num_heads=4, feedforward_channels=8)),
     'divisible'),
    (dict(frozen_stages=3), 'frozen_stages'),
])
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mmsape_vit(**kwargs)


def test_unknown_pos_encoding_lists_registered_ones():
    with pytest.raises(KeyError) as error:
        mmsape_vit(pos_encoding=dict(type='Fourier'))
    for name in ('LearnedAPE', 'SaPE2', 'PEG', 'RoPE2D'):
        assert name in str(error.value)


@pytest.mark.parametrize('images, message', [
    (torch.rand(3, 32, 32), r'\(B, C, H, W\)'),
    (torch.rand(1, 1, 32, 32), 'in_channels'),
    (torch.rand(0, 3, 32, 32), 'Empty batch'),
    (torch.full((1, 3, 32, 32), float('nan')), 'NaN'),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 'floating point'),
])
def test_bad_inputs_raise_clear_errors(images, message):
    with pytest.raises(ValueError, match=message):
        mmsape_vit()(images)


def test_tiny_and_extreme_inputs_work():
    model = mmsape_vit(out_type='featmap', pos_encoding=dict(type='SaPE2'))
    assert model(torch.rand(1, 3, 5, 5))[0].shape == (1, 32, 1, 1)  # smaller than a patch
    assert model(torch.rand(1, 3, 8, 256))[0].shape == (1, 32, 1, 32)  # 1:32 aspect
    channels_last = torch.rand(2, 3, 24, 40).to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(channels_last)[0], model(channels_last.contiguous())[0])


def test_frozen_stages_and_layer_depth():
    model = mmsape_vit(frozen_stages=1)
    model.train()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert 'cls_token' in frozen and 'patch_embed.proj.weight' in frozen
    assert any(name.startswith('blocks.0.') for name in frozen)
    assert not any(name.startswith('blocks.1.') for name in frozen)
    assert model.blocks[0].training is False and model.blocks[1].training is True
    assert model.get_layer_depth('backbone.cls_token', 'backbone.') == (0, 4)
    assert model.get_layer_depth('backbone.blocks.1.attn.qkv.weight', 'backbone.') == (2, 4)
    assert model.get_layer_depth('backbone.norm.weight', 'backbone.') == (3, 4)
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (3, 4)


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = mmsape_vit(pos_encoding=dict(type='SaPE2'), out_type='avg_featmap').train()
    checkpointed = mmsape_vit(pos_encoding=dict(type='SaPE2'), out_type='avg_featmap',
                              with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.rand(2, 3, 24, 40)
    for model in (plain, checkpointed):
        model(images)[0].square().sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


ENCODINGS = sorted(set(registered_pos_encodings()) - {'PositionEncodingStack'})


@pytest.mark.parametrize('encoding', ENCODINGS + ['LearnedAPE+SaPE2'])
@pytest.mark.parametrize('size', [(32, 32), (24, 56), (30, 45)])
@pytest.mark.parametrize('batch, with_cls', [(1, True), (3, False)])
def test_every_encoding_trains_on_any_grid(encoding, size, batch, with_cls):
    """Forward + backward on square, non-square and non-divisible inputs with
    finite gradients reaching the encoding's own parameters."""
    torch.manual_seed(0)
    cfg = ([dict(type=name) for name in encoding.split('+')]
           if '+' in encoding else dict(type=encoding))
    model = mmsape_vit(pos_encoding=cfg, with_cls_token=with_cls,
                       out_type='cls_token' if with_cls else 'avg_featmap').train()
    (out, ) = model(torch.rand(batch, 3, *size))
    assert out.shape == (batch, 32) and torch.isfinite(out).all()
    out.square().mean().backward()
    own = [(n, p) for n, p in model.pos_encoding.named_parameters() if p.requires_grad]
    for name, param in own:
        assert param.grad is not None, f'{encoding}: no gradient reaches {name}'
        assert torch.isfinite(param.grad).all(), f'{encoding}: non-finite gradient in {name}'
    if own:
        assert any(param.grad.abs().sum() > 0 for _, param in own)
