"""Tests of the absolute encodings: LearnedAPE, SinCos2DPositionEncoding, NoPositionEncoding."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsape.models.pos_encodings import (
    LearnedAPE,
    NoPositionEncoding,
    SinCos2DPositionEncoding,
    build_pos_encoding,
)
from mmsape.models.pos_encodings import absolute as absolute_module
from mmsape.models.pos_encodings.base import TokenGrid

EMBED_DIMS = 8


def backbone_args(base_grid=(4, 4), num_prefix_tokens=1, embed_dims=EMBED_DIMS):
    return dict(embed_dims=embed_dims, num_heads=2, num_layers=2, base_grid=base_grid,
                num_prefix_tokens=num_prefix_tokens)


def reference_resize(table, old_hw, new_hw, antialias=True):
    """Resample a (1, H*W, C) table with F.interpolate directly (bicubic)."""
    channels = table.shape[-1]
    as_map = table.reshape(1, *old_hw, channels).permute(0, 3, 1, 2)
    resized = F.interpolate(as_map, size=new_hw, mode='bicubic', antialias=antialias,
                            align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, -1, channels)


@pytest.fixture
def logged(monkeypatch):
    messages = []
    monkeypatch.setattr(absolute_module, 'print_log',
                        lambda msg, *args, **kwargs: messages.append(msg))
    return messages


# --- LearnedAPE -------------------------------------------------------------------------


def test_learned_ape_at_base_grid_adds_table_and_prefix_embed():
    ape = LearnedAPE(**backbone_args(base_grid=(3, 5), num_prefix_tokens=2))
    assert ape.pos_embed.shape == (1, 15, EMBED_DIMS)
    assert ape.prefix_pos_embed.shape == (1, 2, EMBED_DIMS)
    x = torch.randn(2, 2 + 15, EMBED_DIMS)
    out = ape.encode_tokens(x, TokenGrid(3, 5, num_prefix=2))
    torch.testing.assert_close(out[:, 2:], x[:, 2:] + ape.pos_embed)
    torch.testing.assert_close(out[:, :2], x[:, :2] + ape.prefix_pos_embed)


def test_learned_ape_init_is_trunc_normal_002():
    torch.manual_seed(0)
    ape = LearnedAPE(**backbone_args(base_grid=(32, 32), embed_dims=16))
    # timm / mmpretrain convention: trunc_normal_(std=.02) with the default absolute
    # bounds (-2, 2), which in practice is a plain normal of std .02.
    assert abs(ape.pos_embed.std().item() - .02) < .002
    assert abs(ape.pos_embed.mean().item()) < .002


def test_learned_ape_without_prefix_embed_leaves_prefix_untouched():
    ape = LearnedAPE(**backbone_args(num_prefix_tokens=1), with_prefix_embed=False)
    assert ape.prefix_pos_embed is None
    assert ape.no_weight_decay() == {'pos_embed'}
    x = torch.randn(2, 1 + 16, EMBED_DIMS)
    out = ape.encode_tokens(x, TokenGrid(4, 4, num_prefix=1))
    torch.testing.assert_close(out[:, :1], x[:, :1])


def test_learned_ape_no_prefix_tokens_has_no_prefix_embed():
    ape = LearnedAPE(**backbone_args(num_prefix_tokens=0))
    assert ape.prefix_pos_embed is None
    assert ape.no_weight_decay() == {'pos_embed'}


def test_learned_ape_resamples_non_square_grid_with_same_token_count():
    """16x64 from a 32x32 table has the same count: it must still be resampled per axis
    (mmseg 1.2.2 reuses the table row-major here)."""
    torch.manual_seed(0)
    ape = LearnedAPE(**backbone_args(base_grid=(32, 32), num_prefix_tokens=0))
    x = torch.zeros(1, 16 * 64, EMBED_DIMS)
    out = ape.encode_tokens(x, TokenGrid(16, 64, num_prefix=0))
    expected = reference_resize(ape.pos_embed.detach(), (32, 32), (16, 64))
    torch.testing.assert_close(out, expected)
    row_major_reuse = ape.pos_embed.detach()
    assert (out - row_major_reuse).abs().max() > 1e-2

    # A table that encodes the row index must still encode the row after resampling.
    with torch.no_grad():
        rows = torch.arange(32.).repeat_interleave(32)
        ape.pos_embed.copy_(rows.view(1, -1, 1).expand(1, -1, EMBED_DIMS))
    out = ape.encode_tokens(x, TokenGrid(16, 64, num_prefix=0))[0, :, 0].view(16, 64)
    assert torch.allclose(out, out[:, :1].expand(16, 64), atol=1e-4)  # constant along rows
    assert (out[1:, 0] > out[:-1, 0]).all()  # increasing down the rows


@pytest.mark.parametrize('hw', [(2, 3), (7, 5), (1, 9), (9, 1)])
def test_learned_ape_matches_interpolate_on_any_grid(hw):
    ape = LearnedAPE(**backbone_args(base_grid=(4, 6), num_prefix_tokens=1))
    x = torch.zeros(1, 1 + hw[0] * hw[1], EMBED_DIMS)
    out = ape.encode_tokens(x, TokenGrid(*hw, num_prefix=1))
    torch.testing.assert_close(out[:, 1:], reference_resize(ape.pos_embed.detach(), (4, 6), hw))


def test_learned_ape_rejects_prefix_count_mismatch_and_bad_options():
    ape = LearnedAPE(**backbone_args(num_prefix_tokens=1))
    with pytest.raises(ValueError, match='with_prefix_embed'):
        ape.encode_tokens(torch.zeros(1, 2 + 16, EMBED_DIMS), TokenGrid(4, 4, num_prefix=2))
    with pytest.raises(ValueError, match='interpolation'):
        LearnedAPE(**backbone_args(), interpolation='cubic')
    with pytest.raises(ValueError, match='antialias=False'):
        LearnedAPE(**backbone_args(), interpolation='nearest')
    assert LearnedAPE(**backbone_args(), interpolation='nearest', antialias=False)


@pytest.mark.parametrize('antialias', [True, False])
def test_learned_ape_antialias_covers_load_and_forward(antialias, logged):
    """One setting for both resamplings: the checkpoint table to base_grid at load
    (4x4 -> 6x3: grown and shrunk) and the table to each grid in the forward."""
    torch.manual_seed(0)
    table = torch.randn(1, 16, EMBED_DIMS)
    ape = LearnedAPE(**backbone_args(base_grid=(6, 3), num_prefix_tokens=0),
                     antialias=antialias)
    ape.load_state_dict({'pos_embed': table})
    loaded = reference_resize(table, (4, 4), (6, 3), antialias=antialias)
    torch.testing.assert_close(ape.pos_embed.detach(), loaded)
    assert f'antialias={antialias}' in logged[0]
    out = ape.encode_tokens(torch.zeros(1, 2 * 5, EMBED_DIMS), TokenGrid(2, 5, num_prefix=0))
    torch.testing.assert_close(out, reference_resize(loaded, (6, 3), (2, 5), antialias))
    # The settings really differ (PyTorch's antialiased bicubic is PIL's kernel).
    other = reference_resize(table, (4, 4), (6, 3), antialias=not antialias)
    assert (other - loaded).abs().max() > 1e-2


def test_learned_ape_zero_prefix_position_for_table_without_class_slot(logged):
    """timm's no_embed_class: the source added no position to its prefix tokens."""
    table = torch.randn(1, 16, EMBED_DIMS)
    ape = LearnedAPE(**backbone_args(base_grid=(4, 4), num_prefix_tokens=1))
    ape.load_state_dict({'pos_embed': table})
    assert torch.equal(ape.prefix_pos_embed.detach(), torch.zeros(1, 1, EMBED_DIMS))
    assert torch.equal(ape.pos_embed.detach(), table)
    assert any('prefix_pos_embed to zero' in msg for msg in logged)
    # A checkpoint that has its own prefix positions keeps them.
    prefix = torch.randn(1, 1, EMBED_DIMS)
    ape.load_state_dict({'pos_embed': table, 'prefix_pos_embed': prefix})
    assert torch.equal(ape.prefix_pos_embed.detach(), prefix)


def test_learned_ape_loads_square_checkpoint_of_other_grid(logged):
    source = LearnedAPE(**backbone_args(base_grid=(4, 4)))
    target = LearnedAPE(**backbone_args(base_grid=(6, 8)))
    state = {k: v.clone() for k, v in source.state_dict().items()}  # no metadata: inferred
    target.load_state_dict(state)
    torch.testing.assert_close(target.pos_embed.detach(),
                               reference_resize(source.pos_embed.detach(), (4, 4), (6, 8)))
    torch.testing.assert_close(target.prefix_pos_embed, source.prefix_pos_embed)
    assert len(logged) == 1 and '4x4' in logged[0] and '6x8' in logged[0]
    assert '(1, 16, 8)' in logged[0] and '(1, 48, 8)' in logged[0]


def test_learned_ape_loads_timm_table_with_class_slot(logged):
    torch.manual_seed(0)
    timm_table = torch.randn(1, 1 + 9, EMBED_DIMS)  # DeiT layout: class slot, 3x3 grid
    target = LearnedAPE(**backbone_args(base_grid=(5, 4), num_prefix_tokens=1))
    target.load_state_dict({'pos_embed': timm_table}, strict=False)
    torch.testing.assert_close(target.prefix_pos_embed.detach(), timm_table[:, :1])
    torch.testing.assert_close(target.pos_embed.detach(),
                               reference_resize(timm_table[:, 1:], (3, 3), (5, 4)))
    assert any('prefix_pos_embed' in msg for msg in logged)
    assert any('3x3' in msg and '5x4' in msg for msg in logged)

    # Same grid, class slot included: split only, no resize.
    logged.clear()
    same_grid = torch.randn(1, 1 + 20, EMBED_DIMS)
    target.load_state_dict({'pos_embed': same_grid}, strict=False)
    torch.testing.assert_close(target.pos_embed.detach(), same_grid[:, 1:])
    torch.testing.assert_close(target.prefix_pos_embed.detach(), same_grid[:, :1])
    assert not any('Resized' in msg for msg in logged)


def test_learned_ape_drops_class_slot_without_prefix_embed(logged):
    timm_table = torch.randn(1, 1 + 16, EMBED_DIMS)
    target = LearnedAPE(**backbone_args(base_grid=(4, 4), num_prefix_tokens=0))
    target.load_state_dict({'pos_embed': timm_table})
    torch.testing.assert_close(target.pos_embed.detach(), timm_table[:, 1:])
    assert any('Dropped' in msg for msg in logged)


def test_learned_ape_non_square_checkpoint_round_trips_through_metadata(logged, tmp_path):
    """A 2x8 table has 16 tokens like 4x4; the saved metadata keeps them apart."""
    source = LearnedAPE(**backbone_args(base_grid=(2, 8)))
    path = tmp_path / 'ape.pth'
    torch.save(source.state_dict(), path)
    state = torch.load(path)

    same = LearnedAPE(**backbone_args(base_grid=(2, 8)))
    same.load_state_dict(state)
    torch.testing.assert_close(same.pos_embed, source.pos_embed)
    assert not logged

    square = LearnedAPE(**backbone_args(base_grid=(4, 4)))
    square.load_state_dict(state)
    torch.testing.assert_close(square.pos_embed.detach(),
                               reference_resize(source.pos_embed.detach(), (2, 8), (4, 4)))
    assert any('2x8' in msg and '4x4' in msg for msg in logged)


def test_learned_ape_rejects_uninferable_checkpoint():
    target = LearnedAPE(**backbone_args(base_grid=(4, 4)))
    with pytest.raises(ValueError, match='Cannot infer the grid'):
        target.load_state_dict({'pos_embed': torch.zeros(1, 3 + 12, EMBED_DIMS)}, strict=False)


def test_learned_ape_no_weight_decay_and_builder():
    ape = build_pos_encoding(dict(type='LearnedAPE'), **backbone_args(num_prefix_tokens=1))
    assert isinstance(ape, LearnedAPE)
    assert ape.no_weight_decay() == {'pos_embed', 'prefix_pos_embed'}
    assert set(dict(ape.named_parameters())) == ape.no_weight_decay()


# --- SinCos2DPositionEncoding -----------------------------------------------------------


def naive_sincos(height, width, channels, temperature=10000.):
    """MAE's 2D sin-cos, written out token by token in float64."""
    quarter = channels // 4
    table = torch.zeros(height * width, channels, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            for k in range(quarter):
                omega = 1. / temperature**(k / quarter)
                token = row * width + col
                table[token, k] = math.sin(col * omega)
                table[token, quarter + k] = math.cos(col * omega)
                table[token, 2 * quarter + k] = math.sin(row * omega)
                table[token, 3 * quarter + k] = math.cos(row * omega)
    return table


@pytest.mark.parametrize('hw', [(4, 4), (3, 6), (1, 5), (5, 1)])
@pytest.mark.parametrize('num_prefix', [0, 2])
def test_sincos_matches_naive_formula(hw, num_prefix):
    pe = SinCos2DPositionEncoding(**backbone_args(num_prefix_tokens=num_prefix, embed_dims=16),
                                  temperature=100.)
    x = torch.zeros(2, num_prefix + hw[0] * hw[1], 16, dtype=torch.float64)
    out = pe.encode_tokens(x, TokenGrid(*hw, num_prefix=num_prefix))
    assert out.dtype == torch.float64
    assert torch.equal(out[:, :num_prefix], x[:, :num_prefix])  # prefix gets zero
    expected = naive_sincos(*hw, 16, temperature=100.)
    torch.testing.assert_close(out[0, num_prefix:], expected)
    torch.testing.assert_close(out[1, num_prefix:], expected)


def test_sincos_is_computed_per_grid_not_resampled():
    pe = SinCos2DPositionEncoding(**backbone_args(base_grid=(4, 4), embed_dims=16))
    small = pe.sincos_embed((3, 5))[0].double()
    large = pe.sincos_embed((6, 10))[0].double().view(6, 10, 16)
    # Cell (r, c) has the same code on every grid it exists in.
    torch.testing.assert_close(large[:3, :5].reshape(15, 16), small)


def test_sincos_bad_options():
    with pytest.raises(ValueError, match='embed_dims=10'):
        SinCos2DPositionEncoding(**backbone_args(embed_dims=10))
    with pytest.raises(ValueError, match='temperature'):
        SinCos2DPositionEncoding(**backbone_args(), temperature=0.)
    assert SinCos2DPositionEncoding(**backbone_args()).no_weight_decay() == set()


# --- NoPositionEncoding -----------------------------------------------------------------


def test_no_position_encoding_is_identity_and_default():
    pe = build_pos_encoding(None, **backbone_args())
    assert type(pe) is NoPositionEncoding
    x = torch.randn(2, 1 + 12, EMBED_DIMS)
    grid = TokenGrid(3, 4, num_prefix=1)
    assert torch.equal(pe.encode_tokens(x, grid), x)
    assert torch.equal(pe.after_block(0, x, grid), x)
    assert not pe.acts_in_attention and not list(pe.parameters())


# --- every encoding: any grid, any prefix, forward and backward ------------------------

ENCODINGS = {
    'LearnedAPE': dict(type='LearnedAPE'),
    'LearnedAPE-no-prefix-embed': dict(type='LearnedAPE', with_prefix_embed=False),
    'SinCos2D': dict(type='SinCos2DPositionEncoding'),
    'None': dict(type='NoPositionEncoding'),
}


@pytest.mark.parametrize('name', list(ENCODINGS))
@pytest.mark.parametrize('hw', [(4, 4), (3, 5), (1, 6), (6, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1, 3])
@pytest.mark.parametrize('batch', [1, 3])
def test_forward_backward_any_grid(name, hw, num_prefix, batch):
    torch.manual_seed(0)
    pe = build_pos_encoding(ENCODINGS[name],
                            **backbone_args(base_grid=(4, 4), num_prefix_tokens=num_prefix))
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    x = torch.randn(batch, grid.num_tokens, EMBED_DIMS, requires_grad=True)
    out = pe.encode_tokens(x, grid)
    assert out.shape == x.shape and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for param_name, param in pe.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, param_name
