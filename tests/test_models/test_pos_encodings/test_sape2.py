"""Tests of SaPE² (2D Semantic-Aware Position Encoding).

The reference below is written from the equations of the project's method
reference (position-encodings.md, section 1) with explicit loops over tokens, in
float64, and shares no code with the module under test.
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmsape.models.pos_encodings.base import TokenGrid
from mmsape.models.pos_encodings.sape2 import SaPE2
from mmsape.ops.sape2 import CPU_KERNEL_ENV, load_cpu_kernel
from mmsape.registry import POS_ENCODINGS

HEADS = 2
HEAD_DIMS = 8


# The tensors here are tiny: a thread pool only adds overhead and contention.
pytestmark = pytest.mark.usefixtures('single_thread')


def build_sape(num_positions=3, num_layers=2, table_std=0.5, dtype=torch.float64, **options):
    """A SaPE2 with tables large enough that the bias visibly changes attention."""
    sape = SaPE2(embed_dims=HEADS * HEAD_DIMS, num_heads=HEADS, num_layers=num_layers,
                 num_positions=num_positions, **options)
    with torch.no_grad():
        for table in sape.position_tables.values():
            table.normal_(std=table_std)
    return sape.to(dtype)


def random_qkv(grid, batch=2, dtype=torch.float64, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, HEADS, grid.num_tokens, HEAD_DIMS)
    return [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(requires_grad)
            for _ in range(3)]


# --- the independent reference ----------------------------------------------------------


def naive_read(u, table, position, line_length, position_mode):
    """u . e[p] by linear interpolation between the two neighbouring integers."""
    num_positions = table.shape[0] - 1
    if position_mode == 'relative':
        position = position * (num_positions - 1) / line_length
    position = position.clamp(0, num_positions - 1)
    below, above = math.floor(position.item()), math.ceil(position.item())
    weight = position - below
    return (1 - weight) * torch.dot(u, table[below]) + weight * torch.dot(u, table[above])


def naive_distance(a, b, distance):
    squared = ((a - b)**2).sum()
    if distance == 'squared':
        return squared
    if squared.item() == 0:  # the same token: distance 0, and no gradient through sqrt(0)
        return squared * 0
    norm = squared.sqrt()
    return norm / math.sqrt(a.numel()) if distance == 'rms' else norm


def naive_logits(q, k, tables, grid, embed_with='query', scale_gates=True,
                 position_mode='clamp', distance='l2', negative_bias=False):
    """(B, heads, N, N) logits ``q.k / sqrt(d) + bias`` from the equations."""
    batch, heads, num_tokens, dims = q.shape
    height, width, prefix = grid.height, grid.width, grid.num_prefix
    gate_scale = 1 / math.sqrt(dims) if scale_gates else 1.
    sign = -1. if negative_bias else 1.

    def token(row, col):
        return prefix + row * width + col

    out = []
    for b in range(batch):
        per_head = []
        for h in range(heads):
            qs, ks = q[b, h], k[b, h]
            vectors = {}
            for row in range(height):
                for col in range(width):
                    i = token(row, col)
                    u = qs[i] if embed_with == 'query' else ks[i]
                    s_x = []
                    for m in range(width):  # columns m..W-1 of i's row are counted
                        p = sum(torch.sigmoid(gate_scale * torch.dot(qs[i], ks[token(row, j)]))
                                for j in range(m, width))
                        s_x.append(naive_read(u, tables[0], p, width, position_mode))
                    s_y = []
                    for m in range(height):  # rows m..H-1 of i's column are counted
                        p = sum(torch.sigmoid(gate_scale * torch.dot(qs[i], ks[token(j, col)]))
                                for j in range(m, height))
                        s_y.append(naive_read(u, tables[1], p, height, position_mode))
                    vectors[i] = (torch.stack(s_x), torch.stack(s_y))
            rows = []
            for i in range(num_tokens):
                row = []
                for n in range(num_tokens):
                    logit = torch.dot(qs[i], ks[n]) / math.sqrt(dims)
                    if i in vectors and n in vectors:  # prefix tokens: no bias
                        logit = logit + sign * sum(
                            naive_distance(a, c, distance)
                            for a, c in zip(vectors[i], vectors[n]))
                    row.append(logit)
                rows.append(torch.stack(row))
            per_head.append(torch.stack(rows))
        out.append(torch.stack(per_head))
    return torch.stack(out)


def naive_attention(q, k, v, tables, grid, **options):
    return torch.softmax(naive_logits(q, k, tables, grid, **options), dim=-1) @ v


def layer0_tables(sape):
    return sape.position_tables['0']


def grads_of(output, tensors, seed=1):
    weight = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed),
                         dtype=output.dtype)
    return torch.autograd.grad((output * weight).sum(), tensors)


GRIDS = [TokenGrid(3, 3, num_prefix=1), TokenGrid(2, 4, num_prefix=0),
         TokenGrid(2, 4, num_prefix=1), TokenGrid(3, 3, num_prefix=0)]


# --- 1. equality with the reference -----------------------------------------------------


@pytest.mark.parametrize('grid', GRIDS, ids=lambda g: f'{g.height}x{g.width}p{g.num_prefix}')
@pytest.mark.parametrize('embed_with', ['query', 'key'])
@pytest.mark.parametrize('position_mode', ['clamp', 'relative'])
def test_dense_and_chunked_match_naive_reference(grid, embed_with, position_mode):
    # M=3 so that clamping at M-1=2 happens (positions reach 4) and positions
    # are fractional, exercising the interpolation.
    options = dict(embed_with=embed_with, position_mode=position_mode)
    q, k, v = random_qkv(grid)
    sape = build_sape(impl='dense', **options)
    tables = layer0_tables(sape)
    expected_logits = naive_logits(q, k, tables.detach(), grid, **options)
    expected_bias = expected_logits - q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIMS)
    torch.testing.assert_close(sape.attention_bias(0, q, k, grid), expected_bias,
                               rtol=1e-9, atol=1e-9)
    assert expected_bias[..., grid.num_prefix:, grid.num_prefix:].abs().max() > 0.5
    expected = naive_attention(q, k, v, tables.detach(), grid, **options)
    for impl in ('dense', 'chunked'):
        sape.impl = impl
        sape.chunk_size = 5  # several blocks and a ragged last one
        torch.testing.assert_close(sape.attention(0, q, k, v, grid), expected,
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('options', [
    dict(distance='rms'),
    dict(distance='squared', impl='dense'),
    dict(distance='squared', impl='chunked'),
    dict(scale_gates=False),
    dict(negative_bias=True),
    dict(num_positions=10, position_mode='relative', embed_with='key'),
], ids=str)
def test_options_match_naive_reference_with_gradients(options):
    grid = TokenGrid(2, 4, num_prefix=1)
    q, k, v = random_qkv(grid, requires_grad=True)
    sape = build_sape(chunk_size=3, **options)
    tables = layer0_tables(sape)
    naive_options = {key: value for key, value in options.items()
                     if key not in ('impl', 'num_positions')}
    expected = naive_attention(q, k, v, tables, grid, **naive_options)
    actual = sape.attention(0, q, k, v, grid)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
    for got, want in zip(grads_of(actual, (q, k, v, tables)),
                         grads_of(expected, (q, k, v, tables))):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)


def test_dense_gradients_match_naive_reference():
    grid = TokenGrid(3, 3, num_prefix=1)
    q, k, v = random_qkv(grid, batch=1, requires_grad=True)
    sape = build_sape(impl='dense')
    tables = layer0_tables(sape)
    actual = sape.attention(0, q, k, v, grid)
    expected = naive_attention(q, k, v, tables, grid)
    grads = grads_of(actual, (q, k, v, tables))
    for got, want in zip(grads, grads_of(expected, (q, k, v, tables))):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)
    # Positions never pass M-1, so e[M] is never read.
    assert grads[3][:, -1].abs().max() == 0
    assert grads[3][:, :-1].abs().max() > 0


# --- 2. chunked == dense, forward and backward ------------------------------------------


@pytest.mark.parametrize('distance', ['l2', 'rms'])
@pytest.mark.parametrize('num_prefix', [0, 2])
def test_chunked_equals_dense_forward_and_backward(distance, num_prefix):
    grid = TokenGrid(5, 7, num_prefix=num_prefix)  # 35 patches: blocks of 8, last of 3
    q, k, v = random_qkv(grid, dtype=torch.float32, requires_grad=True)
    dense = build_sape(impl='dense', distance=distance, num_positions=6, table_std=0.1,
                       dtype=torch.float32)
    chunked = build_sape(impl='chunked', chunk_size=8, distance=distance, num_positions=6,
                         dtype=torch.float32)
    chunked.load_state_dict(dense.state_dict())
    out_dense = dense.attention(1, q, k, v, grid)
    out_chunked = chunked.attention(1, q, k, v, grid)
    torch.testing.assert_close(out_chunked, out_dense, rtol=1e-5, atol=1e-5)
    grads_dense = grads_of(out_dense, (q, k, v, dense.position_tables['1']))
    grads_chunked = grads_of(out_chunked, (q, k, v, chunked.position_tables['1']))
    for got, want in zip(grads_chunked, grads_dense):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_chunked_keeps_no_square_tensor_for_backward():
    grid = TokenGrid(8, 8, num_prefix=1)
    q, k, v = random_qkv(grid, batch=1, dtype=torch.float32, requires_grad=True)
    sape = build_sape(impl='chunked', chunk_size=16, dtype=torch.float32)
    saved_shapes = []

    def pack(tensor):
        saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        sape.attention(0, q, k, v, grid).sum().backward()
    num_tokens = grid.num_tokens
    assert saved_shapes
    largest = max(math.prod(shape) for shape in saved_shapes)
    # Anything N-wide must be a (B, heads, chunk, N) block at most, never N x N.
    assert largest < HEADS * num_tokens * num_tokens / 2
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


# --- 3. the fused squared variant ------------------------------------------------------


@pytest.mark.parametrize('grid', GRIDS[:3], ids=lambda g: f'{g.height}x{g.width}p{g.num_prefix}')
@pytest.mark.parametrize('negative_bias', [False, True])
def test_fused_matches_naive_squared_reference(grid, negative_bias):
    q, k, v = random_qkv(grid, requires_grad=True)
    sape = build_sape(distance='squared', impl='fused', negative_bias=negative_bias)
    assert sape.resolve_impl(grid) == 'fused'
    tables = layer0_tables(sape)
    expected = naive_attention(q, k, v, tables, grid, distance='squared',
                               negative_bias=negative_bias)
    actual = sape.attention(0, q, k, v, grid)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
    for got, want in zip(grads_of(actual, (q, k, v, tables)),
                         grads_of(expected, (q, k, v, tables))):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)


def test_fused_equals_dense_squared_in_float32():
    grid = TokenGrid(6, 5, num_prefix=1)
    q, k, v = random_qkv(grid, dtype=torch.float32, requires_grad=True)
    fused = build_sape(distance='squared', impl='fused', table_std=0.1, dtype=torch.float32)
    dense = build_sape(distance='squared', impl='dense', dtype=torch.float32)
    dense.load_state_dict(fused.state_dict())
    out_fused = fused.attention(0, q, k, v, grid)
    out_dense = dense.attention(0, q, k, v, grid)
    torch.testing.assert_close(out_fused, out_dense, rtol=1e-4, atol=1e-5)
    grads_fused = grads_of(out_fused, (q, k, v, layer0_tables(fused)))
    grads_dense = grads_of(out_dense, (q, k, v, layer0_tables(dense)))
    for got, want in zip(grads_fused, grads_dense):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


# --- 4. finite gradients at zero distance ----------------------------------------------


@pytest.mark.parametrize('impl,distance', [('dense', 'l2'), ('chunked', 'l2'),
                                           ('dense', 'rms'), ('chunked', 'rms'),
                                           ('fused', 'squared')])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
def test_identical_tokens_give_finite_gradients(impl, distance, dtype):
    # Every token identical: every pairwise distance is 0.
    grid = TokenGrid(3, 4, num_prefix=1)
    token = torch.randn(1, HEADS, 1, HEAD_DIMS, dtype=dtype).expand(2, -1, grid.num_tokens, -1)
    q, k, v = (token.clone().requires_grad_() for _ in range(3))
    sape = build_sape(impl=impl, distance=distance, chunk_size=5, dtype=dtype)
    tables = layer0_tables(sape)
    assert sape.attention_bias(0, q, k, grid).abs().max() < 1e-3
    out = sape.attention(0, q, k, v, grid)
    grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v, tables))
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads)


# --- 5. options -------------------------------------------------------------------------


def test_every_option_combination_builds_and_runs():
    grid = TokenGrid(2, 3, num_prefix=1)
    q, k, v = random_qkv(grid, batch=1, dtype=torch.float32)
    combos = itertools.product(['query', 'key'], [True, False], [True, False],
                               ['clamp', 'relative'], ['l2', 'rms', 'squared'],
                               ['auto', 'dense', 'chunked', 'fused'])
    built = 0
    for embed_with, scale_gates, negative_bias, position_mode, distance, impl in combos:
        options = dict(embed_with=embed_with, scale_gates=scale_gates,
                       negative_bias=negative_bias, position_mode=position_mode,
                       distance=distance, impl=impl, chunk_size=4)
        if impl == 'fused' and distance != 'squared':
            with pytest.raises(ValueError, match='distance'):
                build_sape(dtype=torch.float32, **options)
            continue
        sape = build_sape(dtype=torch.float32, **options)
        out = sape.attention(0, q, k, v, grid)
        assert out.shape == v.shape and torch.isfinite(out).all()
        built += 1
    assert built == 2 * 2 * 2 * 2 * (3 * 3 + 1)


@pytest.mark.parametrize('options,option_name', [
    (dict(embed_with='q'), 'embed_with'),
    (dict(position_mode='absolute'), 'position_mode'),
    (dict(distance='l1'), 'distance'),
    (dict(impl='flash'), 'impl'),
    (dict(impl='fused', distance='l2'), 'distance'),
    (dict(impl='fused', distance='rms'), 'distance'),
    (dict(num_positions=1), 'num_positions'),
    (dict(num_positions=2.5), 'num_positions'),
    (dict(chunk_size=0), 'chunk_size'),
    (dict(layers=[0, 5]), 'layers'),
], ids=str)
def test_bad_options_raise_naming_the_option(options, option_name):
    with pytest.raises(ValueError, match=option_name):
        SaPE2(embed_dims=16, num_heads=2, num_layers=4, **options)


def test_auto_impl_choice(monkeypatch):
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')
    q32 = torch.zeros(1, HEADS, 17, HEAD_DIMS)
    assert build_sape(distance='squared').resolve_impl(TokenGrid(30, 30)) == 'fused'
    assert build_sape(distance='squared').resolve_impl(TokenGrid(4, 4), q32) == 'fused'
    sape = build_sape(chunk_size=17)
    assert sape.resolve_impl(TokenGrid(4, 4, num_prefix=1)) == 'dense'
    assert sape.resolve_impl(TokenGrid(3, 6)) == 'chunked'
    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    if load_cpu_kernel() is not None:
        # The compiled kernel, where it runs, at every size and distance.
        for distance in ('l2', 'squared'):
            sape = build_sape(distance=distance, chunk_size=17)
            assert sape.resolve_impl(TokenGrid(4, 4, num_prefix=1), q32) == 'chunked'
            assert sape.resolve_impl(TokenGrid(4, 4), q32, dropout_p=0.1) != 'chunked'
            assert sape.resolve_impl(TokenGrid(4, 4), q32.double()) != 'chunked'


def test_layers_tables_weight_decay_and_registry():
    sape = POS_ENCODINGS.build(dict(type='SaPE2', embed_dims=16, num_heads=2, num_layers=4,
                                    layers=[1, -1], num_positions=5))
    assert isinstance(sape, SaPE2) and sape.acts_in_attention
    names = {name: tuple(p.shape) for name, p in sape.named_parameters()}
    assert names == {'position_tables.1': (2, 6, 8), 'position_tables.3': (2, 6, 8)}
    assert sape.no_weight_decay() == set(names)
    assert [sape.layer_index_of(name) for name in sorted(names)] == [1, 3]
    assert sape.layer_index_of('something_else') is None
    assert abs(sape.position_tables['1'].std().item() - 0.02) < 0.01
    sape.check_compatible(window_size=7, with_cls_token=False)
    # A layer without SaPE² attends plainly.
    grid = TokenGrid(2, 3, num_prefix=1)
    q, k, v = random_qkv(grid, dtype=torch.float32)
    torch.testing.assert_close(sape.attention(0, q, k, v, grid),
                               F.scaled_dot_product_attention(q, k, v))
    assert not torch.allclose(sape.attention(1, q, k, v, grid),
                              F.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_decay_tables_decides_the_weight_decay_declaration():
    options = dict(embed_dims=16, num_heads=2, num_layers=3, layers=[0, 2])
    assert SaPE2(**options).no_weight_decay() == {'position_tables.0', 'position_tables.2'}
    # The authors' code decays the tables: nothing declared.
    assert SaPE2(decay_tables=True, **options).no_weight_decay() == set()


def test_checkpoints_with_former_table_keys_load():
    sape = SaPE2(embed_dims=16, num_heads=2, num_layers=4, layers=[1, 3], num_positions=5)
    tables = {layer: torch.randn(2, 6, 8) for layer in (1, 3)}
    # The layout before the per-block convention: 'position_tables.layer_<block>'.
    sape.load_state_dict({f'position_tables.layer_{layer}': table
                          for layer, table in tables.items()})
    for layer, table in tables.items():
        torch.testing.assert_close(sape.position_tables[str(layer)].data, table, rtol=0, atol=0)
    # Nested in a backbone, alone or in a stack, under the backbone's prefix.
    from mmsape.models import PosEncViT
    arch = dict(embed_dims=16, num_layers=2, num_heads=2, feedforward_channels=32)
    for pos_encoding, key in [(dict(type='SaPE2'), 'pos_encoding.position_tables'),
                              ([dict(type='LearnedAPE'), dict(type='SaPE2')],
                               'pos_encoding.encodings.1.position_tables')]:
        model = PosEncViT(arch=arch, img_size=32, patch_size=8, pos_encoding=pos_encoding)
        state = model.state_dict()
        table = torch.randn_like(state.pop(f'{key}.1'))
        state[f'{key}.layer_1'] = table
        result = model.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        torch.testing.assert_close(model.state_dict()[f'{key}.1'], table, rtol=0, atol=0)


def test_wrong_token_count_raises():
    sape = build_sape()
    q, k, v = random_qkv(TokenGrid(2, 3, num_prefix=1))
    with pytest.raises(ValueError, match='tokens'):
        sape.attention(0, q, k, v, TokenGrid(3, 2, num_prefix=0))


@pytest.mark.parametrize('impl', ['dense', 'chunked'])
def test_dropout_is_applied(impl):
    grid = TokenGrid(3, 3, num_prefix=1)
    q, k, v = random_qkv(grid, dtype=torch.float32, requires_grad=True)
    sape = build_sape(impl=impl, chunk_size=4, dtype=torch.float32)
    torch.manual_seed(0)
    dropped = sape.attention(0, q, k, v, grid, dropout_p=0.5)
    assert not torch.allclose(dropped, sape.attention(0, q, k, v, grid))
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(dropped.sum(), (q, k, v)))


# --- 6. half precision ------------------------------------------------------------------


@pytest.mark.parametrize('impl,distance', [('dense', 'l2'), ('chunked', 'l2'),
                                           ('fused', 'squared')])
def test_bfloat16_inputs_give_finite_outputs_close_to_float32(impl, distance):
    grid = TokenGrid(4, 5, num_prefix=1)
    q, k, v = random_qkv(grid, dtype=torch.float32)
    sape = build_sape(impl=impl, distance=distance, chunk_size=8, table_std=0.1,
                      dtype=torch.float32)
    reference = sape.attention(0, q, k, v, grid)
    half = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out = sape.attention(0, *half, grid)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.float().sum(), half))


def test_runs_under_cpu_autocast():
    grid = TokenGrid(3, 4, num_prefix=1)
    q, k, v = random_qkv(grid, dtype=torch.float32)
    sape = build_sape(impl='chunked', chunk_size=5, dtype=torch.float32)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        out = sape.attention(0, q, k, v, grid)
    assert torch.isfinite(out).all()
