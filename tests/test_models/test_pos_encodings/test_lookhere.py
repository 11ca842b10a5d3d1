"""Tests of LookHere against a naive per-pair implementation of its definition.

The published head layouts below are written out from the authors' code
(github.com/GreenCUBIC/lookhere, lookhere.py at 889d2e6): the direction
families (L159-210), their order for 12 and 16 heads (L229-234) and the slopes
(get_slopes L114-115, get_none_slopes L104-111). The variants' configs are
'halves-diagonals-none' (LH-180) and 'corners-triangles-none' (LH-90) as ported
from the released checkpoints, and 'eighths1-eighths2-none' (LH-45) by the same
pattern, with global slope 2 and layer slopes 1.5 -> 0.5.
"""
import math

import pytest
import torch
import torch._dynamo

from mmsape.models import PosEncViT
from mmsape.models.pos_encodings import LookHere, TokenGrid, build_pos_encoding
from mmsape.models.pos_encodings.lookhere import lookhere_heads

from builders import padded_and_alone

HEAD_DIMS = 8
# The bias is float32; the naive reference float64.
TOL = dict(rtol=1e-6, atol=1e-6)

# Direction of each name, in degrees counter-clockwise from "right", "up" = 90.
ANGLE = {'right': 0, 'up_right': 45, 'up': 90, 'up_left': 135, 'left': 180,
         'down_left': 225, 'down': 270, 'down_right': 315}
# The official families as (name of the direction looked at, field of view in degrees).
FAMILIES = {
    'halves': [('up', 180), ('down', 180), ('left', 180), ('right', 180)],
    'diagonals': [('up_right', 180), ('up_left', 180), ('down_right', 180), ('down_left', 180)],
    'corners': [('up_left', 90), ('up_right', 90), ('down_left', 90), ('down_right', 90)],
    'triangles': [('up', 90), ('down', 90), ('left', 90), ('right', 90)],
    # tri_up & left, tri_down & left, tri_left & up, tri_right & up: the 45-degree
    # sector between the two named directions.
    'eighths1': [(('up', 'up_left'), 45), (('down', 'down_left'), 45),
                 (('left', 'up_left'), 45), (('right', 'up_right'), 45)],
    'eighths2': [(('up', 'up_right'), 45), (('down', 'down_right'), 45),
                 (('left', 'down_left'), 45), (('right', 'down_right'), 45)],
}
PUBLISHED = {'LH-180': ('halves', 'diagonals'), 'LH-90': ('corners', 'triangles'),
             'LH-45': ('eighths1', 'eighths2')}
NONE_SLOPES = [1 / 4, 1 / 16, 1 / 64, 1 / 256]


def centre_of(direction):
    if isinstance(direction, tuple):  # a sector between two directions 45 degrees apart
        first, second = sorted(ANGLE[d] for d in direction)
        if second - first > 180:  # across 0 degrees, e.g. right and down-right
            first += 360
        return (first + second) / 2 % 360
    return ANGLE[direction]


def published_heads(variant, num_heads):
    """(centre, width) or None, and slope, per head, as the official code lays them out."""
    first, second = PUBLISHED[variant]

    def directed(family, slope):
        return [((centre_of(d), width), slope) for d, width in FAMILIES[family]]

    unrestricted = [(None, s) for s in NONE_SLOPES]
    if num_heads == 12:
        return directed(first, .5) + directed(second, .5) + unrestricted
    assert num_heads == 16
    return directed(first, .5) + directed(first, .25) + directed(second, .5) + unrestricted


def lookhere_heads_as_tuples(variant, num_heads):
    """The module's head layout as ((centre, width) or None, slope), like published_heads."""
    return [(None if fov is None else (fov.centre, fov.width), slope)
            for fov, slope in lookhere_heads(variant, num_heads)]


def sees(fov, d_col, d_row):
    """The paper's field of view: the key's direction within centre +- width / 2
    (boundaries included), or the query itself."""
    if fov is None or (d_col, d_row) == (0, 0):
        return True
    centre, width = fov
    direction = math.degrees(math.atan2(-d_row, d_col))  # rows grow downwards
    off = (direction - centre + 180) % 360 - 180
    return abs(off) <= width / 2 + 1e-9


def naive_bias(height, width, num_prefix, heads, scale):
    """(heads, P + H*W, P + H*W) float64: -scale * slope * distance, -inf outside the view."""
    num_tokens = num_prefix + height * width
    bias = torch.zeros(len(heads), num_tokens, num_tokens, dtype=torch.float64)
    for h, (fov, slope) in enumerate(heads):
        for query in range(height * width):
            for key in range(height * width):
                d_row = key // width - query // width
                d_col = key % width - query % width
                value = (-scale * slope * math.hypot(d_col, d_row)
                         if sees(fov, d_col, d_row) else -math.inf)
                bias[h, num_prefix + query, num_prefix + key] = value
    return bias


def lookhere(num_heads=12, num_layers=4, num_prefix_tokens=1, **options):
    return LookHere(embed_dims=num_heads * HEAD_DIMS, num_heads=num_heads, num_layers=num_layers,
                    num_prefix_tokens=num_prefix_tokens, **options)


def layer_scale(layer, num_layers, global_slope=2., first=1.5, last=.5):
    """The official ``global_slope * np.linspace(first, last, depth)[layer]``."""
    steps = torch.linspace(first, last, num_layers, dtype=torch.float64)
    return global_slope * steps[layer].item()


@pytest.mark.parametrize('variant', sorted(PUBLISHED))
@pytest.mark.parametrize('num_heads', [12, 16])
def test_published_head_layouts(variant, num_heads):
    assert lookhere_heads_as_tuples(variant, num_heads) == published_heads(variant, num_heads)


def test_other_head_counts_take_the_twelve_head_layout_in_order():
    twelve = lookhere_heads('LH-90', 12)
    assert lookhere_heads('LH-90', 4) == twelve[:4]  # the four quadrants
    assert lookhere_heads('LH-90', 6) == twelve[:6]  # the official code's 6-head directions
    twenty_four = lookhere_heads('LH-90', 24)
    assert [fov for fov, _ in twenty_four] == [fov for fov, _ in twelve] * 2
    assert [s for _, s in twenty_four[12:]] == [s / 2 for _, s in twelve]


@pytest.mark.parametrize('variant', sorted(PUBLISHED))
@pytest.mark.parametrize('hw', [(4, 4), (3, 5), (5, 2), (1, 4), (4, 1), (1, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1, 3])
def test_bias_matches_naive_definition(variant, hw, num_prefix):
    num_layers = 3
    module = lookhere(num_heads=12, num_layers=num_layers, num_prefix_tokens=num_prefix,
                      variant=variant)
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    heads = published_heads(variant, 12)
    q = torch.randn(1, 12, grid.num_tokens, HEAD_DIMS)
    for layer in range(num_layers):
        expected = naive_bias(*hw, num_prefix, heads, layer_scale(layer, num_layers))
        actual = module.attention_bias(layer, q, q, grid)
        assert actual.dtype == torch.float32 and actual.shape == expected.shape
        assert torch.equal(torch.isinf(actual), torch.isinf(expected))
        finite = torch.isfinite(expected)
        torch.testing.assert_close(actual.double()[finite], expected[finite], **TOL)


@pytest.mark.parametrize('num_heads', [3, 4, 6, 16])
def test_bias_matches_naive_definition_for_other_head_counts(num_heads):
    module = lookhere(num_heads=num_heads, num_layers=2, variant='LH-45', global_slope=.7,
                      layer_slopes=(1., 3.))
    grid = TokenGrid(3, 4, num_prefix=1)
    heads = lookhere_heads_as_tuples('LH-45', num_heads)
    expected = naive_bias(3, 4, 1, heads, layer_scale(1, 2, .7, 1., 3.))
    actual = module.attention_bias(1, None, None, grid).double()
    assert torch.equal(torch.isinf(actual), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], **TOL)


# What the query at the centre of a 5x5 grid sees ('#' seen, '.' not), drawn by hand.
PICTURES = {
    # LH-180 head 0 (up half): its own row included.
    ('LH-180', 0): ['#####', '#####', '#####', '.....', '.....'],
    # LH-180 head 3 (right half): its own column included.
    ('LH-180', 3): ['..###', '..###', '..###', '..###', '..###'],
    # LH-180 head 4 (half towards up-right): the anti-diagonal through it included.
    ('LH-180', 4): ['#####', '.####', '..###', '...##', '....#'],
    # LH-90 head 1 (up-right quadrant).
    ('LH-90', 1): ['..###', '..###', '..###', '.....', '.....'],
    # LH-90 head 4 (90-degree cone up): both diagonals included.
    ('LH-90', 4): ['#####', '.###.', '..#..', '.....', '.....'],
    # LH-90 head 7 (cone right).
    ('LH-90', 7): ['....#', '...##', '..###', '...##', '....#'],
    # LH-45 head 0 (between up and up-left).
    ('LH-45', 0): ['###..', '.##..', '..#..', '.....', '.....'],
    # LH-45 head 3 (between right and up-right).
    ('LH-45', 3): ['....#', '...##', '..###', '.....', '.....'],
    # LH-45 head 5 (between down and down-right).
    ('LH-45', 5): ['.....', '.....', '..#..', '..##.', '..###'],
    # Heads 8-11 of every variant see everything.
    ('LH-90', 9): ['#####'] * 5,
}


@pytest.mark.parametrize('variant, head', sorted(PICTURES))
def test_fields_of_view_on_hand_drawn_cases(variant, head):
    module = lookhere(num_heads=12, num_prefix_tokens=0, variant=variant)
    bias = module.attention_bias(0, None, None, TokenGrid(5, 5, num_prefix=0))
    seen = torch.isfinite(bias[head, 2 * 5 + 2]).view(5, 5)
    drawn = torch.tensor([[c == '#' for c in row] for row in PICTURES[variant, head]])
    assert torch.equal(seen, drawn), f'\n{seen.int()}'


@pytest.mark.parametrize('variant', sorted(PUBLISHED))
def test_bias_depends_only_on_offsets(variant):
    """Translation equivariance: every (query, key) pair with the same offset gets
    the same bias, whatever the query's position (borders included)."""
    height, width = 4, 6
    module = lookhere(num_heads=12, num_prefix_tokens=0, variant=variant)
    bias = module.attention_bias(2, None, None, TokenGrid(height, width, num_prefix=0))
    rows = torch.arange(height * width) // width
    cols = torch.arange(height * width) % width
    offsets = (rows[None] - rows[:, None]) * 100 + (cols[None] - cols[:, None])
    checked = 0
    for offset in offsets.unique():
        same = bias[:, offsets == offset]  # (heads, pairs with this offset)
        assert torch.equal(same, same[:, :1].expand_as(same)), offset
        checked += same.shape[1] > 1
    assert checked > 30
    # ... and the bias is not constant: it does depend on the offset.
    assert len(bias[0][torch.isfinite(bias[0])].unique()) > 5


def test_shifted_queries_see_the_same_neighbourhood():
    """Moving query and key together by a whole patch leaves the bias unchanged."""
    module = lookhere(num_heads=12, num_prefix_tokens=1, variant='LH-90')
    height, width = 5, 7
    bias = module.attention_bias(0, None, None, TokenGrid(height, width, num_prefix=1))[:, 1:, 1:]

    def pair(query, key):
        return bias[:, query[0] * width + query[1], key[0] * width + key[1]]

    for query, key, shift in [((0, 0), (1, 2), (2, 3)), ((4, 6), (0, 0), (0, 0)),
                              ((1, 4), (3, 1), (1, -1)), ((2, 2), (0, 5), (2, 1))]:
        moved_query = (query[0] + shift[0], query[1] + shift[1])
        moved_key = (key[0] + shift[0], key[1] + shift[1])
        assert torch.equal(pair(query, key), pair(moved_query, moved_key))


def test_prefix_tokens_are_unbiased_and_see_everything():
    module = lookhere(num_heads=12, num_prefix_tokens=2)
    bias = module.attention_bias(0, None, None, TokenGrid(3, 4, num_prefix=2))
    assert torch.equal(bias[:, :2], torch.zeros_like(bias[:, :2]))
    assert torch.equal(bias[:, :, :2], torch.zeros_like(bias[:, :, :2]))


def test_layer_slopes_and_global_slope():
    num_layers = 5
    module = lookhere(num_layers=num_layers, global_slope=3., layer_slopes=(2., .25))
    grid = TokenGrid(3, 3, num_prefix=0)
    unit = lookhere(num_layers=num_layers, global_slope=1., layer_slopes=(1., 1.))
    base = unit.attention_bias(0, None, None, grid)
    finite = torch.isfinite(base)
    for layer in range(num_layers):
        expected = 3. * torch.linspace(2., .25, num_layers)[layer]
        torch.testing.assert_close(module.attention_bias(layer, None, None, grid)[finite],
                                   base[finite] * expected)
    # Blocks outside `layers` attend plainly.
    partial = lookhere(num_layers=num_layers, layers=(-1, ))
    q, k, v = torch.randn(3, 2, 12, 9, HEAD_DIMS)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(partial.attention(0, q, k, v, grid), plain)
    assert not torch.allclose(partial.attention(4, q, k, v, grid), plain)


def test_attention_is_softmax_with_the_bias():
    torch.manual_seed(0)
    module = lookhere(num_heads=4, num_prefix_tokens=1, variant='LH-90').double()
    grid = TokenGrid(3, 5, num_prefix=1)
    q, k, v = torch.randn(3, 2, 4, grid.num_tokens, HEAD_DIMS, dtype=torch.float64)
    heads = lookhere_heads_as_tuples('LH-90', 4)
    bias = naive_bias(3, 5, 1, heads, layer_scale(1, 4))
    logits = q @ k.transpose(-2, -1) / math.sqrt(HEAD_DIMS) + bias
    torch.testing.assert_close(module.attention(1, q, k, v, grid), logits.softmax(-1) @ v, **TOL)


def test_image_tokens_ignore_padding():
    """Real tokens compute exactly what they compute on the unpadded grid, with
    batch padding (pad_mask) and prefix tokens."""
    torch.manual_seed(0)
    module = lookhere(num_heads=12, num_prefix_tokens=1, variant='LH-180')
    height, width, image_h, image_w = 5, 6, 3, 4
    padded = TokenGrid(height, width, num_prefix=1,
                       pad_mask=torch.ones(2, height, width, dtype=torch.bool))
    padded.pad_mask[0, :image_h, :image_w] = False
    padded.pad_mask[1] = False  # the second image fills the grid
    q, k, v = torch.randn(3, 2, 12, padded.num_tokens, HEAD_DIMS)
    out = module.attention(0, q, k, v, padded)
    assert torch.isfinite(out).all()
    image = torch.zeros(height, width, dtype=torch.bool)
    image[:image_h, :image_w] = True
    keep = torch.cat([torch.ones(1, dtype=torch.bool), image.flatten()])
    cropped = TokenGrid(image_h, image_w, num_prefix=1)
    expected = module.attention(0, q[:1, :, keep], k[:1, :, keep], v[:1, :, keep], cropped)
    torch.testing.assert_close(out[:1, :, keep], expected)
    no_padding = module.attention(0, q[1:], k[1:], v[1:], TokenGrid(height, width, num_prefix=1))
    torch.testing.assert_close(out[1:], no_padding)


def test_backbone_output_is_unchanged_by_batch_padding():
    """End to end: a ViT with LookHere gives a padded image's tokens the values it
    gives the image alone (batch padding and ViTDet window padding)."""
    torch.manual_seed(0)
    arch = dict(embed_dims=48, num_layers=2, num_heads=6, feedforward_channels=96)
    for options in (dict(with_cls_token=True, out_type='raw'),
                    dict(with_cls_token=False, out_type='featmap', window_size=3,
                         global_attn_indexes=(1, ))):
        model = PosEncViT(arch=arch, img_size=32, patch_size=8,
                          pos_encoding=dict(type='LookHere', variant='LH-45'), **options).eval()
        grid, alone = padded_and_alone(model)
        torch.testing.assert_close(grid, alone, rtol=1e-4, atol=1e-5)


def test_grid_bias_is_cached_and_rebuilt_per_grid():
    module = lookhere(num_heads=12)
    small, large = TokenGrid(3, 4, num_prefix=1), TokenGrid(6, 8, num_prefix=1)
    first = module.grid_bias(small)
    assert module.grid_bias(small) is first  # built once per grid size
    layer0 = module.attention_bias(0, None, None, small).clone()
    module.attention_bias(3, None, None, small)
    assert torch.equal(module.attention_bias(0, None, None, small), layer0)  # cache untouched
    assert module.grid_bias(large).shape == (12, 49, 49)
    heads = lookhere_heads_as_tuples('LH-180', 12)
    expected = naive_bias(6, 8, 1, heads, layer_scale(1, 4))
    actual = module.attention_bias(1, None, None, large).double()
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(actual), finite)
    torch.testing.assert_close(actual[finite], expected[finite], **TOL)


def test_bias_cached_in_inference_mode_does_not_reach_training():
    module = lookhere(num_heads=4)
    grid = TokenGrid(3, 4, num_prefix=1)
    with torch.inference_mode():
        q = torch.randn(1, 4, grid.num_tokens, HEAD_DIMS)
        module.attention(0, q, q, q, grid)
    q = torch.randn(1, 4, grid.num_tokens, HEAD_DIMS, requires_grad=True)
    module.attention(0, q, q, q, grid).sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize('hw', [(4, 4), (3, 5), (1, 6), (6, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1])
def test_forward_backward_any_grid(hw, num_prefix):
    torch.manual_seed(0)
    module = lookhere(num_heads=6, num_layers=2, num_prefix_tokens=num_prefix, variant='LH-45')
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    q, k, v = (torch.randn(2, 6, grid.num_tokens, HEAD_DIMS, requires_grad=True)
               for _ in range(3))
    out = module.attention(1, module.attention(0, q, k, v, grid), k, v, grid)
    assert out.shape == q.shape and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('with_padding', [False, True])
def test_compiles_without_graph_breaks(train, with_padding):
    module = lookhere(num_heads=4, num_layers=2).train(train)
    pad_mask = torch.zeros(2, 3, 5, dtype=torch.bool) if with_padding else None
    grid = TokenGrid(3, 5, num_prefix=1, pad_mask=pad_mask)
    q = torch.randn(2, 4, grid.num_tokens, HEAD_DIMS)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda x: module.attention(1, x, x, x, grid))(q)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_builder_no_parameters_and_options():
    module = build_pos_encoding(dict(type='LookHere', variant='LH-90'), embed_dims=48,
                                num_heads=6, num_layers=3, base_grid=(4, 4), num_prefix_tokens=1)
    assert module.acts_in_attention
    assert not list(module.parameters()) and module.no_weight_decay() == set()
    assert not module.state_dict()  # nothing to store: the bias is recomputed
    assert 'LH-90' in repr(module)


def test_bad_options():
    with pytest.raises(ValueError, match="variant='LH-60'.*LH-180"):
        lookhere(variant='LH-60')
    with pytest.raises(ValueError, match='global_slope=0.0.*> 0'):
        lookhere(global_slope=0.)
    with pytest.raises(ValueError, match='> 0'):
        lookhere(layer_slopes=(1., -1.))
    with pytest.raises(ValueError, match='first block, last block'):
        lookhere(layer_slopes=(1., .5, .2))
    with pytest.raises(ValueError, match='layers'):
        lookhere(num_layers=3, layers=(3, ))
