"""Tests of RoPE2D against naive implementations of RoPE-ViT's and DINOv3's formulas."""
import math

import pytest
import torch
import torch._dynamo

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


# --- normalised coordinates (DINOv3's RopePositionEmbedding) ------------------------

# Coordinates read back from float32 angles.
COORD_TOL = dict(rtol=1e-5, atol=1e-6)


def naive_dinov3_coords(height, width, normalize_coords):
    """(H*W, 2) patch-centre (row, column) coordinates: 2 (i + 0.5) / D - 1."""
    denominators = {'separate': (height, width), 'max': (max(height, width), ) * 2,
                    'min': (min(height, width), ) * 2}[normalize_coords]
    coords = torch.zeros(height * width, 2, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            coords[row * width + col, 0] = 2 * (row + .5) / denominators[0] - 1
            coords[row * width + col, 1] = 2 * (col + .5) / denominators[1] - 1
    return coords


def naive_dinov3_periods(head_dims, base=100., min_period=None, max_period=None):
    """p_i = base^(i / (d/4)), or min_period (max_period / min_period)^(i / (d/4 - 1))."""
    quarter = head_dims // 4
    if min_period is not None:
        return [min_period * (max_period / min_period)**(i / (quarter - 1)) for i in range(quarter)]
    return [base**(i / quarter) for i in range(quarter)]


def naive_dinov3_rotate(x, coords, periods, num_prefix):
    """Pairs (x[i], x[i + d/2]) turn by 2 pi c / p: the first d/4 by the row, the rest by
    the column."""
    half = x.shape[-1] // 2
    angles = torch.zeros(coords.shape[0], half, dtype=torch.float64)
    for token in range(coords.shape[0]):
        for axis in range(2):
            for i, period in enumerate(periods):
                angles[token, axis * len(periods) + i] = 2 * math.pi * coords[token, axis] / period
    prefix, patches = x[:, :, :num_prefix].double(), x[:, :, num_prefix:].double()
    pairs = torch.complex(patches[..., :half], patches[..., half:])
    rotated = pairs * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([prefix, torch.cat([rotated.real, rotated.imag], dim=-1)], dim=2)


def recovered_coords(rope, grid):
    """(H*W, 2) (row, column) coordinates read back from the lowest-frequency angles.

    That period is theta^((d/4 - 1) / (d/4)) (31.6 for d=16, theta=100), so angles of
    coordinates below ~15 in size are not wrapped."""
    embed = rope.rotary_embed(0, grid, torch.device('cpu')).double()
    sin, cos = embed.chunk(2, dim=-1)
    quarter = HEAD_DIMS // 4
    period = rope.theta**((quarter - 1) / quarter)
    lowest = [quarter - 1, 2 * quarter - 1]  # row, column
    return torch.atan2(sin[:, lowest], cos[:, lowest]) * period / (2 * math.pi)


def dinov3_rope(**options):
    return RoPE2D(**backbone_args(num_prefix_tokens=1), normalize_coords=options.pop(
        'normalize_coords', 'separate'), **options)


@pytest.mark.parametrize('normalize_coords', ['separate', 'min', 'max'])
@pytest.mark.parametrize('hw', [(3, 3), (2, 5), (5, 2), (1, 4)])
@pytest.mark.parametrize('num_prefix', [0, 1, 3])
def test_normalized_coords_match_naive_dinov3(normalize_coords, hw, num_prefix):
    torch.manual_seed(0)
    rope = RoPE2D(**backbone_args(num_prefix_tokens=num_prefix), normalize_coords=normalize_coords)
    assert rope.theta == 100.  # DINOv3's base
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    q, k, v = torch.randn(3, 2, NUM_HEADS, grid.num_tokens, HEAD_DIMS, dtype=torch.float64)
    coords = naive_dinov3_coords(*hw, normalize_coords)
    periods = naive_dinov3_periods(HEAD_DIMS)
    q_rot = naive_dinov3_rotate(q, coords, periods, num_prefix)
    k_rot = naive_dinov3_rotate(k, coords, periods, num_prefix)
    torch.testing.assert_close(rope.rotate(0, q, grid), q_rot, **ANGLE_TOL)
    torch.testing.assert_close(rope.attention(1, q, k, v, grid),
                               naive_attention(q_rot, k_rot, v), **ANGLE_TOL)


@pytest.mark.parametrize('periods', [dict(theta=10.), dict(min_period=.5, max_period=8.)])
def test_normalized_coords_periods(periods):
    torch.manual_seed(0)
    rope = dinov3_rope(**periods)
    grid = TokenGrid(3, 4, num_prefix=1)
    q = torch.randn(2, NUM_HEADS, grid.num_tokens, HEAD_DIMS, dtype=torch.float64)
    expected = naive_dinov3_rotate(
        q, naive_dinov3_coords(3, 4, 'separate'),
        naive_dinov3_periods(HEAD_DIMS, base=periods.get('theta'),
                             min_period=periods.get('min_period'),
                             max_period=periods.get('max_period')), 1)
    torch.testing.assert_close(rope.rotate(0, q, grid), expected, **ANGLE_TOL)


def test_normalized_coords_at_twice_the_grid_sample_the_same_range():
    """Patch centres span the same [-1, 1] at any grid size: a 2x grid halves the
    spacing, and each pair of its patches averages to the centre of the patch they
    split."""
    rope = dinov3_rope().eval()
    for height, width in [(3, 5), (4, 4)]:
        small = recovered_coords(rope, TokenGrid(height, width)).view(height, width, 2)
        large = recovered_coords(rope, TokenGrid(2 * height, 2 * width)).view(
            2 * height, 2 * width, 2)
        for coords, (h, w) in ((small, (height, width)), (large, (2 * height, 2 * width))):
            corner = torch.tensor([1 - 1 / h, 1 - 1 / w], dtype=torch.float64)
            torch.testing.assert_close(coords[0, 0], -corner, **COORD_TOL)
            torch.testing.assert_close(coords[-1, -1], corner, **COORD_TOL)
        pooled = large.view(height, 2, width, 2, 2).mean(dim=(1, 3))
        torch.testing.assert_close(pooled, small, **COORD_TOL)


def test_normalized_coords_min_and_max_on_non_square_grids():
    height, width = 2, 4
    grid = TokenGrid(height, width)
    by_max = recovered_coords(dinov3_rope(normalize_coords='max'), grid).view(height, width, 2)
    by_min = recovered_coords(dinov3_rope(normalize_coords='min'), grid).view(height, width, 2)
    def expect(values):
        return dict(expected=torch.tensor(values, dtype=torch.float64), **COORD_TOL)

    # 'max': the longer axis (columns) spans [-1, 1], the rows keep the same spacing.
    torch.testing.assert_close(by_max[0, :, 1], **expect([-.75, -.25, .25, .75]))
    torch.testing.assert_close(by_max[:, 0, 0], **expect([-.75, -.25]))
    # 'min': the shorter axis (rows) spans [-1, 1], the columns reach beyond.
    torch.testing.assert_close(by_min[:, 0, 0], **expect([-.5, .5]))
    torch.testing.assert_close(by_min[0, :, 1], **expect([-.5, .5, 1.5, 2.5]))


def test_normalized_coords_eval_is_deterministic_and_unaugmented():
    grid = TokenGrid(3, 4)
    plain = recovered_coords(dinov3_rope().eval(), grid)
    augmented = dinov3_rope(shift_coords=.3, jitter_coords=1.5, rescale_coords=2.).eval()
    first, second = recovered_coords(augmented, grid), recovered_coords(augmented, grid)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, plain, **COORD_TOL)
    # Training without augmentation options is plain too.
    torch.testing.assert_close(recovered_coords(dinov3_rope().train(), grid), plain, **COORD_TOL)


def uniform_ks_statistic(samples, low, high):
    """Kolmogorov-Smirnov distance between the samples and U(low, high)."""
    ordered = samples.sort().values
    cdf = ((ordered - low) / (high - low)).clamp(0, 1)
    n = len(ordered)
    above = torch.arange(1, n + 1, dtype=ordered.dtype) / n - cdf
    below = cdf - torch.arange(n, dtype=ordered.dtype) / n
    return max(above.max().item(), below.max().item())


DRAWS = 2000
# KS critical value for 2000 draws at a 1e-4 false-alarm rate: sqrt(-ln(5e-5) / 2) / sqrt(n).
KS_CRITICAL = math.sqrt(-math.log(5e-5) / 2) / math.sqrt(DRAWS)


@pytest.mark.parametrize('augmentation', ['shift_coords', 'jitter_coords', 'rescale_coords'])
def test_training_augmentation_distributions(augmentation):
    """Each draw moves every patch the same way; shifts are U(-s, s) per axis,
    jitters log-uniform in [1/J, J] per axis, rescales log-uniform in [1/R, R]
    for both axes at once."""
    value = {'shift_coords': .4, 'jitter_coords': 1.5, 'rescale_coords': 2.}[augmentation]
    grid = TokenGrid(2, 4)  # no coordinate is 0, so every patch shows the scale factors
    plain = recovered_coords(dinov3_rope().eval(), grid)
    rope = dinov3_rope(**{augmentation: value}).train()
    torch.manual_seed(0)
    draws = []
    for _ in range(DRAWS):
        coords = recovered_coords(rope, grid)
        if augmentation == 'shift_coords':
            change = coords - plain  # (tokens, 2): one shift per axis
        else:
            change = (coords / plain).log()  # one log-factor per axis
        torch.testing.assert_close(change, change[:1].expand_as(change), **COORD_TOL)  # all patches
        draws.append(change[0])
    draws = torch.stack(draws)  # (DRAWS, 2): row, column
    bound = value if augmentation == 'shift_coords' else math.log(value)
    assert draws.abs().max() <= bound + 1e-5
    if augmentation == 'rescale_coords':
        torch.testing.assert_close(draws[:, 0], draws[:, 1], **COORD_TOL)  # one factor, both axes
    else:
        assert (draws[:, 0] - draws[:, 1]).abs().min() > 0  # independent axes
        assert abs(torch.corrcoef(draws.T)[0, 1].item()) < .1
    for axis in range(2):
        assert uniform_ks_statistic(draws[:, axis], -bound, bound) < KS_CRITICAL
    # Seeded: the same seed gives the same draws.
    torch.manual_seed(0)
    torch.testing.assert_close(recovered_coords(rope, grid), plain + draws[0] if
                               augmentation == 'shift_coords' else plain * draws[0].exp(),
                               **COORD_TOL)


def test_training_augmentations_compose_in_dinov3_order():
    """shift, then jitter, then rescale: coords' = ((c + u) * j) * r, so each axis is an
    affine map of the plain coordinates with the scale j * r and offset u * j * r."""
    grid = TokenGrid(3, 4)
    plain = recovered_coords(dinov3_rope().eval(), grid)
    rope = dinov3_rope(shift_coords=.3, jitter_coords=1.5, rescale_coords=2.).train()
    torch.manual_seed(1)
    for _ in range(20):
        coords = recovered_coords(rope, grid)
        for axis in range(2):
            x, y = plain[:, axis], coords[:, axis]
            scale = (y[-1] - y[0]) / (x[-1] - x[0])
            offset = y[0] - scale * x[0]
            torch.testing.assert_close(y, scale * x + offset, **COORD_TOL)
            assert 1 / 3 - 1e-5 <= scale <= 3 + 1e-5  # j * r within [1/(J R), J R]
            assert abs(offset / scale) <= .3 + 1e-5  # the shift, before scaling


def test_training_queries_and_keys_share_one_draw_per_call():
    """A shift moves queries and keys together, so patch-patch logits stay those of
    evaluation (RoPE is relative); the class token's logits change. Each call
    draws anew."""
    torch.manual_seed(0)
    rope = dinov3_rope(shift_coords=.5).double()
    grid = TokenGrid(3, 4, num_prefix=1)
    q, k, v = torch.randn(3, 2, NUM_HEADS, grid.num_tokens, HEAD_DIMS, dtype=torch.float64)

    def logits(module):
        embed = module.rotary_embed(0, grid, q.device)
        q_rot, k_rot = module.rotate(0, q, grid, embed), module.rotate(0, k, grid, embed)
        return q_rot @ k_rot.transpose(-2, -1)

    eval_logits, train_logits = logits(rope.eval()), logits(rope.train())
    torch.testing.assert_close(train_logits[..., 1:, 1:], eval_logits[..., 1:, 1:], **ANGLE_TOL)
    assert not torch.allclose(train_logits[..., 0, 1:], eval_logits[..., 0, 1:])
    # Inside attention too: without prefix tokens a shared shift changes nothing.
    patches = TokenGrid(3, 4, num_prefix=0)
    q, k, v = q[:, :, 1:], k[:, :, 1:], v[:, :, 1:]
    expected = rope.eval().attention(0, q, k, v, patches)
    torch.testing.assert_close(rope.train().attention(0, q, k, v, patches), expected,
                               **ANGLE_TOL)
    # A new draw for every call (a rescale changes patch-patch logits).
    rope = dinov3_rope(rescale_coords=2.).double().train()
    first = rope.attention(0, q, k, v, patches)
    assert not torch.allclose(first, rope.attention(0, q, k, v, patches))
    rope.eval()
    assert torch.equal(rope.attention(0, q, k, v, patches), rope.attention(0, q, k, v, patches))


def test_normalized_embedding_cache_only_without_augmentation():
    rope = dinov3_rope(rescale_coords=2.)
    grid = TokenGrid(3, 4)
    rope.train()
    rope.rotary_embed(0, grid, torch.device('cpu'))
    assert len(rope._embeds) == 0  # a fresh draw each time, nothing cached
    rope.eval()
    first = rope.rotary_embed(0, grid, torch.device('cpu'))
    assert rope.rotary_embed(1, grid, torch.device('cpu')) is first


def test_normalized_coords_bad_options():
    with pytest.raises(ValueError, match="shift_coords.*normalize_coords='separate'"):
        RoPE2D(**backbone_args(), shift_coords=.1)
    with pytest.raises(ValueError, match="min_period, max_period.*normalised coordinates"):
        RoPE2D(**backbone_args(), min_period=1., max_period=10.)
    with pytest.raises(ValueError, match="normalize_coords='corner'"):
        RoPE2D(**backbone_args(), normalize_coords='corner')
    with pytest.raises(ValueError, match="needs mode='axial'"):
        RoPE2D(**backbone_args(), mode='mixed', normalize_coords='separate')
    with pytest.raises(ValueError, match='give both'):
        RoPE2D(**backbone_args(), normalize_coords='separate', min_period=1.)
    with pytest.raises(ValueError, match='give one of them'):
        RoPE2D(**backbone_args(), normalize_coords='separate', theta=100., min_period=1.,
               max_period=10.)
    with pytest.raises(ValueError, match='jitter_coords must be finite and >= 1'):
        RoPE2D(**backbone_args(), normalize_coords='separate', jitter_coords=.5)
    normalized = build_pos_encoding(dict(type='RoPE2D', normalize_coords='max'), **backbone_args())
    assert not list(normalized.parameters()) and not normalized.state_dict()


CONFIGS = {
    'axial': dict(),
    'mixed': dict(mode='mixed'),
    'normalized': dict(normalize_coords='separate'),
    'normalized+augment': dict(normalize_coords='separate', shift_coords=.1, jitter_coords=1.2,
                               rescale_coords=2.),
}


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_compiles_without_graph_breaks(name, train):
    rope = RoPE2D(**backbone_args(num_layers=2), **CONFIGS[name]).train(train)
    grid = TokenGrid(3, 5, num_prefix=1)
    q = torch.randn(2, NUM_HEADS, grid.num_tokens, HEAD_DIMS)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda x: rope.attention(1, x, x, x, grid))(q)
    assert explanation.graph_break_count == 0, explanation.break_reasons
