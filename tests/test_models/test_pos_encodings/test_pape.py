"""Tests of PaPE against a naive implementation of its equations.

The reference below is written from the definition (``docs/method.md``, section
"PaPE"), not from the module: coordinates by a loop over the grid (1-based
(column, row), prefix tokens at (0, 0), no centring), projected positions
``P = W_pos c``, per-query curvature ``a = softplus(W_a t)`` and slope
``b = W_b t``, and the bias by broadcasting over (query i, key j, head h,
parabola p) on the differences ``P_ip - P_jp`` themselves, never on the
expanded square the module's fused path uses. Everything in float64.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsape.models import PosEncViT
from mmsape.models.pos_encodings import PaPE, TokenGrid, build_pos_encoding

from builders import padded_and_alone, tiny_vit

EMBED_DIMS, HEADS, HEAD_DIMS = 16, 2, 8
BACKBONE = dict(embed_dims=EMBED_DIMS, num_heads=HEADS, num_layers=3)
# float64 module against the float64 reference: only summation order differs.
EXACT = dict(rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- reference
def reference_coordinates(grid: TokenGrid, coords: str = 'patch') -> torch.Tensor:
    """``(N, 2)`` (x, y) per token, from the definition, by a loop."""
    rows = [[0., 0.]] * grid.num_prefix
    for row in range(grid.height):
        for col in range(grid.width):
            x, y = col + 1., row + 1.
            if coords == 'normalized':
                x, y = x / grid.width, y / grid.height
            rows.append([x, y])
    return torch.tensor(rows, dtype=torch.float64)


def reference_bias(pape: PaPE, layer: int, grid: TokenGrid, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, N)`` raw bias ``b_ij`` (before 1/sqrt(d)), float64."""
    maps = pape.layer_maps[str(layer)]
    coords = reference_coordinates(grid, pape.coords)
    batch, num_tokens, _ = tokens.shape
    if pape.rotation_invariant:
        scales = maps.position_scales.double()  # (heads,)
        curvature = F.softplus(tokens.double() @ maps.curvature.weight.double().t())  # (B, N, h)
        offsets = coords[:, None, :] - coords[None, :, :]  # (N, N, 2)
        squared = (scales[:, None, None, None] * offsets).square().sum(-1)  # (h, N, N)
        bias = -curvature.transpose(1, 2)[..., None] * squared
    else:
        parabolas = pape.parabolas
        positions = coords @ maps.position.weight.double().t()  # (N, h * p)
        positions = positions.view(num_tokens, HEADS, parabolas)
        shapes = tokens.double() @ maps.curvature_slope.weight.double().t()  # (B, N, 2 h p)
        curvature = F.softplus(shapes[..., :HEADS * parabolas]).view(batch, num_tokens, HEADS,
                                                                     parabolas)
        slope = shapes[..., HEADS * parabolas:].view(batch, num_tokens, HEADS, parabolas)
        # difference[h, i, j, p] = P_ip - P_jp
        difference = (positions[:, None] - positions[None, :]).permute(2, 0, 1, 3)
        # per query: a[b, h, i, 1, p]
        a = curvature.permute(0, 2, 1, 3)[:, :, :, None]
        b = slope.permute(0, 2, 1, 3)[:, :, :, None]
        bias = (-a * difference.square() + b * difference).sum(-1)
    if pape.prefix_position == 'none':
        bias = bias.clone()
        bias[..., :grid.num_prefix, :] = 0
        bias[..., :, :grid.num_prefix] = 0
    return bias


def reference_blocked(grid: TokenGrid) -> torch.Tensor:
    """``(B, 1, N, N)``: True where an image / prefix query meets a padding key."""
    batch = grid.pad_mask.shape[0]
    padding = torch.zeros(batch, grid.num_tokens, dtype=torch.bool)
    for index in range(batch):
        for row in range(grid.height):
            for col in range(grid.width):
                padding[index, grid.num_prefix + row * grid.width + col] = \
                    grid.pad_mask[index, row, col]
    blocked = torch.zeros(batch, 1, grid.num_tokens, grid.num_tokens, dtype=torch.bool)
    for index in range(batch):
        for i in range(grid.num_tokens):
            for j in range(grid.num_tokens):
                blocked[index, 0, i, j] = bool(padding[index, j]) and not padding[index, i]
    return blocked


def reference_attention(pape, layer, q, k, v, grid, tokens):
    """softmax((q.k + b) / sqrt(d)), padding keys masked for image queries."""
    logits = (q.double() @ k.double().transpose(-1, -2) +
              reference_bias(pape, layer, grid, tokens)) / math.sqrt(q.shape[-1])
    if grid.pad_mask is not None:
        logits = logits.masked_fill(reference_blocked(grid), float('-inf'))
    return logits.softmax(-1) @ v.double()


def inputs(grid: TokenGrid, batch: int = 2, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, HEADS, grid.num_tokens, HEAD_DIMS, generator=generator,
                           dtype=dtype).requires_grad_() for _ in range(3))
    tokens = torch.randn(batch, grid.num_tokens, EMBED_DIMS, generator=generator,
                         dtype=dtype).requires_grad_()
    return q, k, v, tokens


def pape(**options) -> PaPE:
    torch.manual_seed(options.pop('seed', 0))
    options.setdefault('parabolas', None if options.get('rotation_invariant') else 3)
    return build_pos_encoding(dict(type='PaPE', **options), **BACKBONE)


def assert_matches_reference(module: PaPE, layer: int, grid: TokenGrid, tol=EXACT,
                             dtype=torch.float64) -> None:
    """Forward and the gradients of q, k, v, tokens and every parameter."""
    q, k, v, tokens = inputs(grid, dtype=dtype)
    params = [p for p in module.parameters() if p.requires_grad]
    out = module.attention(layer, q, k, v, grid, tokens=tokens)
    expected = reference_attention(module, layer, q, k, v, grid, tokens)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, **tol)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(5),
                            dtype=torch.float64)
    leaves = [q, k, v, tokens] + params
    got = torch.autograd.grad((out.double() * cotangent).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((expected * cotangent).sum(), leaves, allow_unused=True)
    names = ['q', 'k', 'v', 'tokens'] + [n for n, p in module.named_parameters() if p.requires_grad]
    for name, actual, reference in zip(names, got, want):
        if not name.startswith(f'layer_maps.{layer}.') and name in dict(module.named_parameters()):
            # Another block's maps: untouched by this block's attention.
            assert actual is None and reference is None, name
            continue
        assert actual is not None and reference is not None, name
        torch.testing.assert_close(actual.double(), reference.double(), **tol,
                                   msg=lambda message, name=name: f"{name}: {message}")


# ---------------------------------------------------------------- the bias
def test_hand_computed_bias():
    """One head, one parabola, a 1 x 2 grid: P = x, a = softplus(0) = ln 2, b = 0.5.

    b_12 = -ln2 (1 - 2)^2 + 0.5 (1 - 2) = -ln2 - 0.5; b_21 = -ln2 + 0.5; b_ii = 0;
    the attention adds b / sqrt(d) with d = 4.
    """
    module = PaPE(embed_dims=4, num_heads=1, num_layers=1, parabolas=1, num_prefix_tokens=0)
    maps = module.layer_maps['0']
    with torch.no_grad():
        maps.position.weight.copy_(torch.tensor([[1., 0.]]))      # P = x
        maps.curvature_slope.weight.copy_(torch.tensor([[0., 0., 0., 0.],     # W_a t = 0
                                                        [0.5, 0., 0., 0.]]))  # W_b t = t_0
    grid = TokenGrid(1, 2, num_prefix=0)
    tokens = torch.tensor([[[1., 3., -2., 7.], [1., -1., 5., 0.]]])
    q = k = torch.zeros(1, 1, 2, 4)
    ln2 = math.log(2)
    expected = torch.tensor([[0., -ln2 - 0.5], [-ln2 + 0.5, 0.]]) / 2
    torch.testing.assert_close(module.attention_bias(0, q, k, grid, tokens=tokens)[0, 0],
                               expected)
    # The attention itself: softmax of the bias alone when q.k = 0.
    v = torch.eye(2)[None, None]
    torch.testing.assert_close(module.attention(0, q, k, v, grid, tokens=tokens)[0, 0],
                               expected.softmax(-1))


def test_hand_computed_rotation_invariant_bias():
    """PaPE-RI: b_ij = -a_i ||s (c_i - c_j)||^2; a 2 x 2 grid, s = 0.5, a = ln 2."""
    module = PaPE(embed_dims=4, num_heads=1, num_layers=1, rotation_invariant=True,
                  num_prefix_tokens=1)
    maps = module.layer_maps['0']
    with torch.no_grad():
        maps.position_scales.fill_(0.5)
        maps.curvature.weight.zero_()
    grid = TokenGrid(2, 2, num_prefix=1)
    tokens = torch.randn(1, 5, 4)
    q = k = torch.zeros(1, 1, 5, 4)
    bias = module.attention_bias(0, q, k, grid, tokens=tokens)[0, 0] * 2  # undo 1/sqrt(4)
    ln2 = math.log(2)
    # Patch (row 0, col 0) at (1, 1) vs (row 1, col 1) at (2, 2): 0.25 * 2; the class
    # token at (0, 0) vs (1, 1): 0.25 * 2, vs (2, 2): 0.25 * 8.
    torch.testing.assert_close(bias[1, 4], torch.tensor(-ln2 * 0.5))
    torch.testing.assert_close(bias[0, 1], torch.tensor(-ln2 * 0.5))
    torch.testing.assert_close(bias[0, 4], torch.tensor(-ln2 * 2.))
    torch.testing.assert_close(bias[2, 3], torch.tensor(-ln2 * 0.5))  # (2, 1) vs (1, 2)


@pytest.mark.parametrize('coords', ['patch', 'normalized'])
def test_patch_bias_depends_only_on_coordinate_differences(coords):
    """Shift check: a 3 x 4 block of tokens placed at rows 2.., columns 1.. of a
    5 x 6 grid gets, between its patches, the bias it gets on its own 3 x 4 grid
    (coords='patch'); between a patch and the class token at the origin the bias
    changes with the shift, so the check can tell."""
    module = pape(coords=coords, prefix_position='origin').double()
    small, large = TokenGrid(3, 4, num_prefix=1), TokenGrid(5, 6, num_prefix=1)
    generator = torch.Generator().manual_seed(1)
    placed = torch.randn(1, 3, 4, EMBED_DIMS, generator=generator, dtype=torch.float64)
    canvas = torch.randn(1, 5, 6, EMBED_DIMS, generator=generator, dtype=torch.float64)
    canvas[:, 2:5, 1:5] = placed
    cls = torch.randn(1, 1, EMBED_DIMS, generator=generator, dtype=torch.float64)
    small_tokens = torch.cat([cls, placed.flatten(1, 2)], 1)
    large_tokens = torch.cat([cls, canvas.flatten(1, 2)], 1)
    q = torch.zeros(1, HEADS, 1, HEAD_DIMS, dtype=torch.float64)
    small_bias = module.attention_bias(0, q.expand(-1, -1, small.num_tokens, -1), q, small,
                                       tokens=small_tokens)
    large_bias = module.attention_bias(0, q.expand(-1, -1, large.num_tokens, -1), q, large,
                                       tokens=large_tokens)
    index = torch.tensor([1 + (row + 2) * 6 + col + 1 for row in range(3) for col in range(4)])
    shifted = large_bias[:, :, index][:, :, :, index]
    if coords == 'patch':
        torch.testing.assert_close(shifted, small_bias[:, :, 1:, 1:], **EXACT)
    else:  # normalised coordinates scale differently on grids of another size
        assert not torch.allclose(shifted, small_bias[:, :, 1:, 1:])
    assert not torch.allclose(large_bias[:, :, 0, index], small_bias[:, :, 0, 1:])


def test_centred_coordinates_keep_float32_close_on_a_large_grid():
    """The module centres the coordinates (the reference does not), which only
    shrinks the terms of the expanded square. Measured on this 24 x 40 grid in
    float32: max error 3.6e-5 centred, 1.6e-4 with the uncentred 1-based
    coordinates; the tolerance sits between them."""
    module = pape(parabolas=8)
    grid = TokenGrid(24, 40, num_prefix=1)
    q, k, v, tokens = inputs(grid, dtype=torch.float32)
    with torch.no_grad():
        out = module.attention(0, q, k, v, grid, tokens=tokens)
    expected = reference_attention(module, 0, q, k, v, grid, tokens)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=8e-5)


# ---------------------------------------------------------------- attention
GRIDS = [(3, 5), (1, 7), (4, 4), (6, 1)]
PREFIXES = [0, 1, 3]  # none, a class token, a class token and two register tokens


@pytest.mark.parametrize('impl', ['fused', 'dense'])
@pytest.mark.parametrize('prefix_position', ['origin', 'none'])
@pytest.mark.parametrize('num_prefix', PREFIXES)
@pytest.mark.parametrize('grid_hw', GRIDS, ids=str)
def test_matches_reference_forward_and_backward(grid_hw, num_prefix, prefix_position, impl):
    module = pape(prefix_position=prefix_position, impl=impl).double()
    assert_matches_reference(module, 1, TokenGrid(*grid_hw, num_prefix=num_prefix))


@pytest.mark.parametrize('prefix_position', ['origin', 'none'])
@pytest.mark.parametrize('grid_hw', [(3, 5), (1, 7)], ids=str)
def test_float32_fused_is_close_to_reference(grid_hw, prefix_position):
    module = pape(prefix_position=prefix_position)
    assert_matches_reference(module, 0, TokenGrid(*grid_hw, num_prefix=1),
                             tol=dict(rtol=1e-5, atol=1e-5), dtype=torch.float32)


@pytest.mark.parametrize('options', [
    dict(coords='normalized'),
    dict(coords='normalized', prefix_position='none'),
    dict(rotation_invariant=True),
    dict(rotation_invariant=True, prefix_position='none'),
    dict(rotation_invariant=True, coords='normalized', impl='dense'),
    dict(parabolas=1),
    dict(parabolas=5, width_multiple=1),
    dict(parabolas=None),  # the authors' 50
], ids=lambda options: '-'.join(f'{k}={v}' for k, v in options.items()))
@pytest.mark.parametrize('grid_hw', [(3, 5), (1, 7)], ids=str)
def test_options_match_reference(options, grid_hw):
    module = pape(**options).double()
    assert_matches_reference(module, 2, TokenGrid(*grid_hw, num_prefix=1))


def test_augmented_width_is_rounded_to_the_multiple():
    grid, tokens = TokenGrid(2, 3, num_prefix=1), torch.randn(1, 7, EMBED_DIMS)
    for options, width in [(dict(parabolas=3), 11 + 5), (dict(parabolas=3, width_multiple=1), 11),
                           (dict(parabolas=None), 152), (dict(rotation_invariant=True), 5 + 3)]:
        query, key = pape(**options).parabola_factors(0, grid, tokens)
        assert query.shape == (1, HEADS, 7, width) and key.shape == (1, HEADS, 7, width)
        assert (HEAD_DIMS + width) % pape(**options).width_multiple == 0


def test_layers_subset_attends_plainly_elsewhere():
    module = pape(layers=[1, -1]).double()
    assert module.layers == (1, 2) and sorted(module.layer_maps) == ['1', '2']
    grid = TokenGrid(3, 5, num_prefix=1)
    q, k, v, tokens = inputs(grid)
    torch.testing.assert_close(module.attention(0, q, k, v, grid, tokens=tokens),
                               F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)
    assert_matches_reference(module, 2, grid)
    with pytest.raises(ValueError, match=r'Layer 0 has no PaPE maps \(layers=\[1, 2\]\)'):
        module.attention_bias(0, q, k, grid, tokens=tokens)


def test_attention_dropout_is_applied_and_eval_is_exact():
    module = pape().double()
    grid = TokenGrid(3, 5, num_prefix=1)
    q, k, v, tokens = inputs(grid)
    plain = module.attention(0, q, k, v, grid, tokens=tokens)
    torch.manual_seed(0)
    dropped = module.attention(0, q, k, v, grid, dropout_p=0.5, tokens=tokens)
    assert dropped.shape == plain.shape and not torch.allclose(dropped, plain)


# ---------------------------------------------------------------- padding
def padded_grid(num_prefix: int = 1) -> TokenGrid:
    pad_mask = torch.zeros(3, 4, 5, dtype=torch.bool)
    pad_mask[0, 2:] = True          # image 2 x 5
    pad_mask[1, :, 3:] = True       # image 4 x 3
    pad_mask[1, 3:] = True          # ... 3 x 3
    return TokenGrid(4, 5, num_prefix=num_prefix, pad_mask=pad_mask)  # image 2 fills the grid


@pytest.mark.parametrize('impl', ['fused', 'dense'])
@pytest.mark.parametrize('prefix_position', ['origin', 'none'])
@pytest.mark.parametrize('num_prefix', [0, 1])
def test_padding_matches_reference_with_the_mask(num_prefix, prefix_position, impl):
    module = pape(prefix_position=prefix_position, impl=impl).double()
    grid = padded_grid(num_prefix)
    q, k, v, tokens = inputs(grid, batch=3)
    out = module.attention(0, q, k, v, grid, tokens=tokens)
    torch.testing.assert_close(out, reference_attention(module, 0, q, k, v, grid, tokens),
                               **EXACT)
    assert_matches_reference_with_batch(module, grid)


def assert_matches_reference_with_batch(module, grid):
    q, k, v, tokens = inputs(grid, batch=3)
    out = module.attention(0, q, k, v, grid, tokens=tokens)
    expected = reference_attention(module, 0, q, k, v, grid, tokens)
    leaves = [q, k, v, tokens] + list(module.layer_maps['0'].parameters())
    for actual, reference in zip(torch.autograd.grad(out.square().sum(), leaves),
                                 torch.autograd.grad(expected.square().sum(), leaves)):
        torch.testing.assert_close(actual, reference, **EXACT)


@pytest.mark.parametrize('impl', ['fused', 'dense'])
def test_padding_keys_get_exactly_zero_attention_from_image_queries(impl):
    module = pape(impl=impl)
    grid = padded_grid(num_prefix=1)
    q, k, _, tokens = inputs(grid, batch=3, dtype=torch.float32)
    eye = torch.eye(grid.num_tokens).expand(3, HEADS, -1, -1)
    weights = module.attention(0, q, k, eye, grid, tokens=tokens)  # the attention matrix
    padding = F.pad(grid.pad_mask.flatten(1), (1, 0), value=False)  # (B, N)
    image_rows = ~padding
    for index in range(3):
        rows = weights[index][:, image_rows[index]]
        assert torch.all(rows[..., padding[index]] == 0), 'an image query sees padding'
        assert torch.all(rows[..., ~padding[index]] > 0)
        # Padding queries attend as if image: finite, normalised rows.
        pad_rows = weights[index][:, padding[index]]
        assert torch.isfinite(pad_rows).all()
        torch.testing.assert_close(pad_rows.sum(-1), torch.ones_like(pad_rows.sum(-1)))


def test_image_tokens_compute_what_they_compute_without_padding():
    """Independent of the reference: cropping the padding away changes nothing
    for image and prefix tokens (the padding is bottom / right, so coordinates
    are unchanged; the centring moves them all by one offset)."""
    module = pape().double()
    grid = padded_grid(num_prefix=1)
    q, k, v, tokens = inputs(grid, batch=3)
    out = module.attention(0, q, k, v, grid, tokens=tokens)
    for index, (height, width) in enumerate([(2, 5), (3, 3), (4, 5)]):
        image = torch.zeros(4, 5, dtype=torch.bool)
        image[:height, :width] = True
        keep = torch.cat([torch.ones(1, dtype=torch.bool), image.flatten()])
        crop = TokenGrid(height, width, num_prefix=1)
        expected = module.attention(0, q[index:index + 1, :, keep], k[index:index + 1, :, keep],
                                    v[index:index + 1, :, keep], crop,
                                    tokens=tokens[index:index + 1, keep])
        torch.testing.assert_close(out[index:index + 1, :, keep], expected, **EXACT)


def test_all_padding_window_stays_finite():
    module = pape()
    grid = TokenGrid(2, 2, num_prefix=0, pad_mask=torch.ones(1, 2, 2, dtype=torch.bool))
    q, k, v, tokens = inputs(grid, batch=1, dtype=torch.float32)
    out = module.attention(0, q, k, v, grid, tokens=tokens)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(tokens.grad).all()


# ---------------------------------------------------------------- windows
def reference_windowed_block(model: PosEncViT, x: torch.Tensor, hw, window: int,
                             pad_mask=None) -> torch.Tensor:
    """Block 0 of ``model`` on ``(B, H*W, C)`` tokens, its attention computed
    window by window with :func:`reference_attention` on window-local grids."""
    block, encoding = model.blocks[0], model.pos_encoding
    height, width = hw
    batch, _, channels = x.shape
    y = block.norm1(x).reshape(batch, height, width, channels)
    rows, cols = math.ceil(height / window), math.ceil(width / window)
    padded = y.new_zeros(batch, rows * window, cols * window, channels)
    padded[:, :height, :width] = y
    padding = torch.ones(batch, rows * window, cols * window, dtype=torch.bool)
    padding[:, :height, :width] = False if pad_mask is None else pad_mask
    attended = torch.zeros_like(padded)
    for row in range(rows):
        for col in range(cols):
            cells = (slice(None), slice(row * window, (row + 1) * window),
                     slice(col * window, (col + 1) * window))
            tokens = padded[cells].reshape(batch, window * window, channels)
            grid = TokenGrid(window, window, 0, padding[cells])
            qkv = block.attn.qkv(tokens).reshape(batch, window * window, 3, HEADS, -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            if grid.pad_mask.any():
                out = reference_attention(encoding, 0, q, k, v, grid, tokens)
            else:
                out = reference_attention(encoding, 0, q, k, v, grid.replace(pad_mask=None),
                                          tokens)
            out = block.attn.proj(out.transpose(1, 2).reshape(batch, window * window, channels))
            attended[cells] = out.reshape(batch, window, window, channels)
    x = x + attended[:, :height, :width].reshape(batch, height * width, channels)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize('batch_padding', [False, True])
def test_windows_through_the_backbone_match_a_per_window_reference(batch_padding):
    """A 4 x 5 grid in 3 x 3 windows (padded at the bottom and right), with and
    without batch padding: block 0's output against the reference per window."""
    torch.manual_seed(0)
    model = PosEncViT(arch=dict(embed_dims=EMBED_DIMS, num_layers=2, num_heads=HEADS,
                                feedforward_channels=32),
                      img_size=32, patch_size=8, with_cls_token=False, out_type='featmap',
                      window_size=3, global_attn_indexes=(1, ),
                      pos_encoding=dict(type='PaPE', parabolas=3)).double().eval()
    images = torch.randn(2, 3, 32, 40, dtype=torch.float64)
    pixel_mask, token_mask = None, None
    if batch_padding:
        pixel_mask = torch.zeros(2, 32, 40, dtype=torch.bool)
        pixel_mask[0, 16:] = True
        pixel_mask[0, :, 24:] = True
        token_mask = torch.zeros(2, 4, 5, dtype=torch.bool)
        token_mask[0, 2:] = True
        token_mask[0, :, 3:] = True
    captured = {}
    model.blocks[0].register_forward_hook(
        lambda module, args, output: captured.update(x=args[0], out=output))
    with torch.no_grad():
        model(images, pixel_mask)
        expected = reference_windowed_block(model, captured['x'], (4, 5), 3, token_mask)
    if token_mask is None:
        torch.testing.assert_close(captured['out'], expected, **EXACT)
    else:  # padding tokens' own values are unspecified
        image = (~token_mask).flatten(1)
        torch.testing.assert_close(captured['out'][image], expected[image], **EXACT)


@pytest.mark.parametrize('options', [
    dict(with_cls_token=True, out_type='raw'),
    dict(with_cls_token=False, out_type='featmap', window_size=3, global_attn_indexes=(1, ))
], ids=['global', 'windows'])
def test_backbone_output_is_unchanged_by_batch_padding(options):
    """End to end, independent of the reference: a ViT with PaPE gives a padded
    image's tokens the values it gives the image alone (batch padding, and
    ViTDet window padding on top of it)."""
    torch.manual_seed(0)
    model = PosEncViT(arch=dict(embed_dims=48, num_layers=2, num_heads=6,
                                feedforward_channels=96),
                      img_size=32, patch_size=8, pos_encoding=dict(type='PaPE'),
                      **options).double().eval()
    grid, alone = padded_and_alone(model, torch.float64)
    torch.testing.assert_close(grid, alone, **EXACT)


# ---------------------------------------------------------------- precision
@pytest.mark.parametrize('dtype, tol', [(torch.bfloat16, 1.5e-2), (torch.float16, 2e-3)])
def test_cpu_autocast_is_close_to_the_reference(dtype, tol):
    """Under autocast q, k, v and the tokens arrive in half precision (what the
    backbone's projections give); the columns and the attention are computed in
    float32 and only the output is rounded to v's dtype. Against the float64
    reference on the same rounded inputs (outputs up to ~4), measured over three
    seeds: at most 7.3e-3 (bf16) and 9.6e-4 (fp16), the output's own rounding;
    attention on half-precision columns gave 2.4e-2..3.7e-2 and 2.6e-3..3.9e-3.
    The tolerances are twice the measured errors."""
    module = pape(parabolas=None)
    grid = TokenGrid(5, 7, num_prefix=1)
    q, k, v, tokens = (t.detach() for t in inputs(grid, dtype=torch.float32))
    half = [t.to(dtype).requires_grad_() for t in (q, k, v, tokens)]
    with torch.autocast('cpu', dtype=dtype):
        out = module.attention(0, *half[:3], grid, tokens=half[3])
    assert out.dtype == dtype
    expected = reference_attention(module, 0, *(t.double() for t in half[:3]), grid,
                                   half[3].double())
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol)
    out.float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in half)


# ---------------------------------------------------------------- options, errors
@pytest.mark.parametrize('options, message', [
    (dict(parabolas=0), r'parabolas must be an int >= 1 .*authors use 50.*got 0'),
    (dict(parabolas=2.5), r'parabolas must be an int >= 1'),
    (dict(parabolas=True), r'parabolas must be an int >= 1'),
    (dict(coords='pixels'), r"coords must be one of 'patch', 'normalized'; got 'pixels'"),
    (dict(prefix_position='first'),
     r"prefix_position must be one of 'origin', 'none'; got 'first'"),
    (dict(impl='flex'), r"impl must be one of 'fused', 'dense'; got 'flex'"),
    (dict(width_multiple=0), r'width_multiple must be an int >= 1 \(8 as the authors'),
    (dict(rotation_invariant=True, parabolas=4),
     r'one parabola per head; remove parabolas=4'),
    (dict(rotation_invariant='yes'), r'rotation_invariant must be True \(PaPE-RI\) or False'),
])
def test_bad_options_fail_at_build_time_naming_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        build_pos_encoding(dict(type='PaPE', **options), **BACKBONE)


def test_missing_or_mismatched_tokens_are_named():
    module = pape()
    grid = TokenGrid(2, 3, num_prefix=1)
    q, k, v, tokens = inputs(grid, dtype=torch.float32)
    with pytest.raises(ValueError, match=r'none were given: pass tokens=<the \(B, N, C\) input'):
        module.attention(0, q, k, v, grid)
    with pytest.raises(ValueError, match=r'tokens of shape \(2, 7, 15\) do not match the '
                                         r'attention: expected \(B, 7, 16\)'):
        module.attention(0, q, k, v, grid, tokens=tokens[..., :15])
    with pytest.raises(ValueError, match=r'tokens have batch 1, but q has batch 2'):
        module.attention(0, q, k, v, grid, tokens=tokens[:1])
    bad_mask = grid.replace(pad_mask=torch.zeros(2, 3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r'grid.pad_mask has shape \(2, 3, 2\).*\(B, H, W\)'):
        module.attention(0, q, k, v, bad_mask, tokens=tokens)
    # The other layers attend plainly and need no tokens.
    plain = pape(layers=[0])
    plain.attention(1, q, k, v, grid)


def test_parameters_are_decayed_and_placed_with_their_block():
    model = tiny_vit(dict(type='PaPE', parabolas=2), num_layers=3, frozen_stages=1)
    encoding = model.pos_encoding
    assert encoding.no_weight_decay() == set()
    assert model.no_weight_decay() == {'cls_token'}
    names = dict(encoding.named_parameters())
    assert sorted(names) == [f'layer_maps.{layer}.{name}.weight' for layer in range(3)
                             for name in ('curvature_slope', 'position')]
    assert model.get_layer_depth('backbone.pos_encoding.layer_maps.2.position.weight',
                                 'backbone.') == (3, 5)
    assert not names['layer_maps.0.position.weight'].requires_grad  # frozen with block 0
    assert names['layer_maps.1.position.weight'].requires_grad


def test_default_initialisation_is_pytorchs_linear():
    """The authors keep nn.Linear's default init (uniform, bound 1/sqrt(fan_in));
    the backbone's own initialisation (trunc-normal 0.02 on its blocks) leaves
    them alone."""
    model = tiny_vit('PaPE', embed_dims=32, num_heads=4)
    maps = model.pos_encoding.layer_maps['0']
    assert model.pos_encoding.parabolas == 50
    for weight, fan_in in ((maps.position.weight, 2), (maps.curvature_slope.weight, 32)):
        bound = 1 / math.sqrt(fan_in)
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
        assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def test_rotation_invariant_scales_are_saved_and_fixed():
    module = pape(rotation_invariant=True, seed=3)
    state = module.state_dict()
    assert sorted(state) == [f'layer_maps.{layer}.{name}' for layer in range(3)
                             for name in ('curvature.weight', 'position_scales')]
    scales = state['layer_maps.0.position_scales']
    assert scales.shape == (HEADS, ) and scales.abs().max() <= math.sqrt(0.5)
    assert all(not name.endswith('position_scales') for name, _ in module.named_parameters())
    other = pape(rotation_invariant=True, seed=4)
    assert not torch.equal(other.state_dict()['layer_maps.0.position_scales'], scales)
    other.load_state_dict(state)
    assert torch.equal(other.state_dict()['layer_maps.0.position_scales'], scales)


# ---------------------------------------------------------------- in the backbone
@pytest.mark.parametrize('options', [dict(), dict(rotation_invariant=True),
                                     dict(prefix_position='none', coords='normalized')],
                         ids=str)
def test_backbone_trains(options):
    """A few AdamW steps on a fixed batch lower the loss, and every PaPE
    parameter gets a gradient."""
    model = tiny_vit(dict(type='PaPE', **options), seed=0, train=True,
                     num_register_tokens=1, out_type='avg_featmap')
    head = torch.nn.Linear(32, 3)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 24, 40, generator=generator)
    labels = torch.tensor([0, 1, 2, 1])
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = F.cross_entropy(head(model(images)[0]), labels)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in model.pos_encoding.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_backbone_attention_receives_the_normed_tokens():
    """PosEncAttention passes its input (the block's input after norm1) as tokens."""
    model = tiny_vit(dict(type='PaPE', parabolas=2), seed=0, num_layers=1)
    seen = {}
    original = model.pos_encoding.attention

    def spy(layer, q, k, v, grid, dropout_p=0., tokens=None):
        seen['tokens'] = tokens
        return original(layer, q, k, v, grid, dropout_p=dropout_p, tokens=tokens)

    model.pos_encoding.attention = spy
    captured = {}
    model.blocks[0].norm1.register_forward_hook(
        lambda module, args, output: captured.update(normed=output))
    model(torch.randn(1, 3, 16, 24))
    assert seen['tokens'] is captured['normed']
