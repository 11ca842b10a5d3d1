"""Tests of RoPE2D against a naive implementation of RoPE-ViT's formulas."""
import math

import pytest
import torch

from mmsape.models.pos_encodings import RoPE2D, build_pos_encoding
from mmsape.models.pos_encodings.base import TokenGrid

EMBED_DIMS, NUM_HEADS = 32, 2
HEAD_DIMS = EMBED_DIMS // NUM_HEADS
# Rotation angles are built in float32 (as in RoPE-ViT and timm) even for float64
# inputs, so float64 comparisons allow float32 rounding of the angles.
ANGLE_TOL = dict(atol=1e-5, rtol=1e-5)


def backbone_args(num_prefix_tokens=1, num_layers=3, embed_dims=EMBED_DIMS, num_heads=NUM_HEADS):
    return dict(embed_dims=embed_dims, num_heads=num_heads, num_layers=num_layers,
                base_grid=(4, 4), num_prefix_tokens=num_prefix_tokens)


def naive_angles(height, width, head_dims, theta=None, freqs=None):
    """(heads or 1, H*W, d/2) rotation angles of RoPE-ViT, token by token.

    Axial (compute_axial_cis): pair i < d/4 turns by col * theta^(-4i/d), pair d/4 + i by
    row * theta^(-4i/d). Mixed (compute_mixed_cis): pair i turns by fx_i * col + fy_i * row.
    """
    num_pairs = head_dims // 2
    if freqs is None:
        angles = torch.zeros(1, height * width, num_pairs, dtype=torch.float64)
        for row in range(height):
            for col in range(width):
                for i in range(head_dims // 4):
                    freq = 1. / theta**(4 * i / head_dims)
                    angles[0, row * width + col, i] = col * freq
                    angles[0, row * width + col, head_dims // 4 + i] = row * freq
        return angles
    num_heads = freqs.shape[1]
    angles = torch.zeros(num_heads, height * width, num_pairs, dtype=torch.float64)
    for h in range(num_heads):
        for row in range(height):
            for col in range(width):
                for i in range(num_pairs):
                    angles[h, row * width + col, i] = (freqs[0, h, i].item() * col +
                                                       freqs[1, h, i].item() * row)
    return angles


def naive_rotate(x, angles, num_prefix):
    """Complex product of consecutive pairs (x[2i], x[2i+1]) with exp(1j * angle)."""
    prefix, patches = x[:, :, :num_prefix], x[:, :, num_prefix:].double()
    as_complex = torch.view_as_complex(patches.reshape(*patches.shape[:-1], -1, 2).contiguous())
    rotated = as_complex * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([prefix.double(), torch.view_as_real(rotated).flatten(-2)], dim=2)


def naive_attention(q, k, v):
    logits = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    return logits.softmax(-1) @ v.double()


def rope_freqs(rope, layer):
    return rope.freqs[str(layer)].detach().double()


@pytest.mark.parametrize('mode', ['axial', 'mixed'])
@pytest.mark.parametrize('hw', [(3, 3), (2, 5), (5, 2), (1, 4), (4, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1, 3])
def test_rope_matches_naive_rope_vit(mode, hw, num_prefix):
    torch.manual_seed(0)
    rope = RoPE2D(**backbone_args(num_prefix_tokens=num_prefix), mode=mode).double()
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    q, k, v = torch.randn(3, 2, NUM_HEADS, grid.num_tokens, HEAD_DIMS, dtype=torch.float64)
    layer = 1
    if mode == 'axial':
        angles = naive_angles(*hw, HEAD_DIMS, theta=100.)
    else:
        angles = naive_angles(*hw, HEAD_DIMS, freqs=rope_freqs(rope, layer))
    q_rot, k_rot = naive_rotate(q, angles, num_prefix), naive_rotate(k, angles, num_prefix)
    torch.testing.assert_close(rope.rotate(layer, q, grid), q_rot, **ANGLE_TOL)
    assert torch.equal(rope.rotate(layer, k, grid)[:, :, :num_prefix],
                       k[:, :, :num_prefix])  # prefix untouched
    torch.testing.assert_close(rope.attention(layer, q, k, v, grid),
                               naive_attention(q_rot, k_rot, v), **ANGLE_TOL)


def test_rope_float32_matches_naive():
    torch.manual_seed(0)
    rope = RoPE2D(**backbone_args(), mode='axial', theta=10.)
    grid = TokenGrid(4, 7, num_prefix=1)
    q = torch.randn(2, NUM_HEADS, grid.num_tokens, HEAD_DIMS)
    expected = naive_rotate(q, naive_angles(4, 7, HEAD_DIMS, theta=10.), 1)
    torch.testing.assert_close(rope.rotate(0, q, grid).double(), expected, atol=1e-5, rtol=1e-5)


def test_rope_axial_cache_follows_grid_changes():
    torch.manual_seed(0)
    rope = RoPE2D(**backbone_args(num_prefix_tokens=0))
    for hw in [(3, 5), (5, 3), (3, 5), (2, 2)]:
        grid = TokenGrid(*hw, num_prefix=0)
        q = torch.randn(1, NUM_HEADS, grid.num_tokens, HEAD_DIMS, dtype=torch.float64)
        torch.testing.assert_close(
            rope.rotate(0, q, grid), naive_rotate(q, naive_angles(*hw, HEAD_DIMS, 100.), 0),
            **ANGLE_TOL)


@pytest.mark.parametrize('mode', ['axial', 'mixed'])
def test_rope_logits_depend_only_on_position_difference(mode):
    """Every token has the same content, so logits may differ only through position:
    logit(a, b) must equal logit(a + s, b + s) for any 2D shift s."""
    torch.manual_seed(0)
    rope = RoPE2D(**backbone_args(num_prefix_tokens=1), mode=mode).double()
    height, width = 5, 6
    grid = TokenGrid(height, width, num_prefix=1)
    q = torch.randn(1, NUM_HEADS, 1, HEAD_DIMS, dtype=torch.float64).expand(
        -1, -1, grid.num_tokens, -1)
    k = torch.randn(1, NUM_HEADS, 1, HEAD_DIMS, dtype=torch.float64).expand(
        -1, -1, grid.num_tokens, -1)
    q_rot, k_rot = rope.rotate(0, q, grid)[:, :, 1:], rope.rotate(0, k, grid)[:, :, 1:]
    logits = (q_rot @ k_rot.transpose(-2, -1))[0].view(NUM_HEADS, height, width, height, width)

    def logit(a, b):
        return logits[:, a[0], a[1], b[0], b[1]]

    checked = 0
    for a, b, shift in [((0, 0), (1, 2), (2, 3)), ((4, 5), (0, 0), (0, 0)),
                        ((1, 4), (3, 1), (1, -1)), ((2, 2), (2, 2), (2, 3)),
                        ((0, 3), (4, 3), (0, -3))]:
        shifted_a = (a[0] + shift[0], a[1] + shift[1])
        shifted_b = (b[0] + shift[0], b[1] + shift[1])
        if all(0 <= p[0] < height and 0 <= p[1] < width for p in (shifted_a, shifted_b)):
            torch.testing.assert_close(logit(a, b), logit(shifted_a, shifted_b), **ANGLE_TOL)
            checked += 1
    assert checked >= 4
    # ... and it does depend on the difference: RoPE is not a no-op.
    assert not torch.allclose(logit((0, 0), (0, 1)), logit((0, 0), (1, 0)))
    # Exhaustive: all pairs with the same (dy, dx) share one logit.
    flat = logits.reshape(NUM_HEADS, height * width, height * width)
    rows = torch.arange(height * width) // width
    cols = torch.arange(height * width) % width
    offsets = (rows[:, None] - rows[None]) * 100 + (cols[:, None] - cols[None])
    for offset in offsets.unique():
        same = flat[:, offsets == offset]
        torch.testing.assert_close(same, same[:, :1].expand_as(same), **ANGLE_TOL)


def test_rope_mixed_init_follows_rope_vit():
    """init_random_2d_freqs: per head a random angle a; the first d/4 pairs point along
    (cos a, sin a), the last d/4 along (cos(a + pi/2), sin(a + pi/2)), magnitudes
    10^(-4i/d)."""
    torch.manual_seed(0)
    rope = RoPE2D(**backbone_args(num_layers=4), mode='mixed', layers=(1, 3))
    assert rope.theta == 10.
    assert sorted(rope.freqs) == ['1', '3']
    quarter = HEAD_DIMS // 4
    magnitudes = 1. / 10.**(torch.arange(quarter, dtype=torch.float64) * 4 / HEAD_DIMS)
    directions = []
    for layer in ('1', '3'):
        freqs = rope.freqs[layer].detach().double()
        assert freqs.shape == (2, NUM_HEADS, HEAD_DIMS // 2)
        for h in range(NUM_HEADS):
            fx, fy = freqs[0, h], freqs[1, h]
            torch.testing.assert_close(torch.hypot(fx[:quarter], fy[:quarter]), magnitudes)
            torch.testing.assert_close(torch.hypot(fx[quarter:], fy[quarter:]), magnitudes)
            angle = torch.atan2(fy[:quarter], fx[:quarter])
            torch.testing.assert_close(angle, angle[:1].expand(quarter))  # one angle per head
            torch.testing.assert_close(torch.atan2(fy[quarter:], fx[quarter:]).cos(),
                                       (angle + math.pi / 2).cos())
            directions.append(angle[0].item())
    assert len({round(a, 4) for a in directions}) == len(directions)  # random per head/layer


def test_rope_layers_option_and_plain_attention_elsewhere():
    torch.manual_seed(0)
    rope = RoPE2D(**backbone_args(num_layers=3), layers=(-1, ))
    assert rope.layers == (2, )
    grid = TokenGrid(2, 3, num_prefix=1)
    q, k, v = torch.randn(3, 1, NUM_HEADS, grid.num_tokens, HEAD_DIMS)
    torch.testing.assert_close(rope.attention(0, q, k, v, grid),
                               naive_attention(q, k, v).float())
    assert not torch.allclose(rope.attention(2, q, k, v, grid), rope.attention(0, q, k, v, grid))


def test_rope_bad_options():
    with pytest.raises(ValueError, match='num_heads.*embed_dims|embed_dims.*num_heads'):
        RoPE2D(**backbone_args(embed_dims=24, num_heads=4))  # head dim 6
    with pytest.raises(ValueError, match='mode'):
        RoPE2D(**backbone_args(), mode='2d')
    with pytest.raises(ValueError, match='theta'):
        RoPE2D(**backbone_args(), theta=-1.)
    with pytest.raises(ValueError, match='layers'):
        RoPE2D(**backbone_args(num_layers=3), layers=(3, ))


def test_rope_builder_weight_decay_and_layer_index():
    axial = build_pos_encoding(dict(type='RoPE2D'), **backbone_args())
    assert axial.acts_in_attention and axial.theta == 100.
    assert not list(axial.parameters()) and axial.no_weight_decay() == set()
    assert not axial.state_dict()  # nothing to store: angles are recomputed
    mixed = build_pos_encoding(dict(type='RoPE2D', mode='mixed'), **backbone_args())
    assert mixed.no_weight_decay() == {'freqs.0', 'freqs.1', 'freqs.2'}
    assert mixed.layer_index_of('freqs.2') == 2 and mixed.layer_index_of('other') is None


@pytest.mark.parametrize('mode', ['axial', 'mixed'])
@pytest.mark.parametrize('hw', [(4, 4), (3, 5), (1, 6), (6, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1, 3])
@pytest.mark.parametrize('batch', [1, 3])
def test_forward_backward_any_grid(mode, hw, num_prefix, batch):
    torch.manual_seed(0)
    rope = RoPE2D(**backbone_args(num_prefix_tokens=num_prefix, num_layers=2), mode=mode)
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    q, k, v = (torch.randn(batch, NUM_HEADS, grid.num_tokens, HEAD_DIMS, requires_grad=True)
               for _ in range(3))
    out = rope.attention(0, q, k, v, grid)
    out = rope.attention(1, out, out, out, grid)
    assert out.shape == q.shape and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for tensor in (q, k, v):
        assert torch.isfinite(tensor.grad).all()
    for name, param in rope.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if grid.num_patches > 1:
            assert param.grad.abs().sum() > 0, name


def test_rope_axial_embedding_cached_in_inference_mode_does_not_reach_training():
    rope = RoPE2D(**backbone_args())
    grid = TokenGrid(3, 4, num_prefix=1)
    with torch.inference_mode():
        q = torch.randn(1, NUM_HEADS, grid.num_tokens, HEAD_DIMS)
        rope.attention(0, q, q, q, grid)
    q = torch.randn(1, NUM_HEADS, grid.num_tokens, HEAD_DIMS, requires_grad=True)
    rope.attention(0, q, q, q, grid).sum().backward()
    assert torch.isfinite(q.grad).all()
