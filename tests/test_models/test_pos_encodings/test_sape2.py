"""Tests of SaPE² (2D Semantic-Aware Position Encoding).

The reference below is written from the equations of docs/method.md#8-sape-published
and docs/method.md#9-sape-query-relative with explicit loops over tokens, in
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


def naive_read(u, table, position, line_length, position_mode, signed=False, head=None):
    """z(p) by linear interpolation between the two neighbouring integer positions:
    ``u . e[t]`` for embedding tables, ``e[t, head]`` for per-head scalar tables."""
    num_positions = (table.shape[0] + 1) // 2 if signed else table.shape[0]
    last = num_positions - 1
    if position_mode == 'relative':
        position = position * last / line_length
    position = position.clamp(-last if signed else 0, last)
    below, above = math.floor(position.item()), math.ceil(position.item())
    weight = position - below

    def value(integer):
        row = table[integer + last if signed else integer]
        return row[head] if u is None else torch.dot(u, row)

    return (1 - weight) * value(below) + weight * value(above)


def naive_position(gates, query_at, column, count_from):
    """Contextual position of ``column`` seen from the query at ``query_at``;
    ``gates[j]`` is the query's gate on the line's token j."""
    if count_from == 'row_end':  # columns m..L-1 are counted
        return sum(gates[j] for j in range(column, len(gates)))
    if column > query_at:  # (x_i, c]
        return sum(gates[j] for j in range(query_at + 1, column + 1))
    if column < query_at:  # [c, x_i), counted negative
        return -sum(gates[j] for j in range(column, query_at))
    return torch.zeros((), dtype=torch.float64)


def naive_distance(a, b, distance):
    squared = ((a - b)**2).sum()
    if distance == 'squared':
        return squared
    if squared.item() == 0:  # the same token: distance 0, and no gradient through sqrt(0)
        return squared * 0
    norm = squared.sqrt()
    return norm / math.sqrt(a.numel()) if distance == 'rms' else norm


def naive_logits(q, k, tables, grid, embed_with='query', scale_gates=True,
                 position_mode='clamp', distance='l2', negative_bias=False,
                 count_from='row_end', bias='distance', table_values='embeddings',
                 gate_temperature=1., pad_mask=None):
    """(B, heads, N, N) logits ``q.k / sqrt(d) + bias`` from the equations."""
    batch, heads, num_tokens, dims = q.shape
    height, width, prefix = grid.height, grid.width, grid.num_prefix
    gate_scale = (1 / math.sqrt(dims) if scale_gates else 1.) / gate_temperature
    sign = -1. if negative_bias else 1.
    signed = count_from == 'query'

    def token(row, col):
        return prefix + row * width + col

    out = []
    for b in range(batch):
        valid = (torch.ones(height, width) if pad_mask is None or not signed else
                 (~pad_mask[b]).double())
        per_head = []
        for h in range(heads):
            qs, ks = q[b, h], k[b, h]
            vectors = {}
            for row in range(height):
                for col in range(width):
                    i = token(row, col)
                    u = None
                    if table_values == 'embeddings':
                        u = qs[i] if embed_with == 'query' else ks[i]

                    # The query's gates on the tokens of its row and its column.
                    gates_x = [valid[row, j] * torch.sigmoid(
                        gate_scale * torch.dot(qs[i], ks[token(row, j)])) for j in range(width)]
                    gates_y = [valid[j, col] * torch.sigmoid(
                        gate_scale * torch.dot(qs[i], ks[token(j, col)])) for j in range(height)]
                    s_x = [naive_read(u, tables[0], naive_position(gates_x, col, m, count_from),
                                      width, position_mode, signed, h)
                           for m in range(width)]
                    s_y = [naive_read(u, tables[1], naive_position(gates_y, row, m, count_from),
                                      height, position_mode, signed, h)
                           for m in range(height)]
                    vectors[i] = (torch.stack(s_x), torch.stack(s_y))
            rows = []
            for i in range(num_tokens):
                row = []
                for n in range(num_tokens):
                    logit = torch.dot(qs[i], ks[n]) / math.sqrt(dims)
                    if i in vectors and n in vectors:  # prefix tokens: no bias
                        if bias == 'lookup':
                            key_row, key_col = divmod(n - prefix, width)
                            logit = logit + vectors[i][0][key_col] + vectors[i][1][key_row]
                        else:
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
    # M rows e[0..M-1] as in the authors' code (formerly M+1, e[M] never read):
    # every row is reachable, the last one by positions in (M-2, M-1].
    assert tables.shape == (2, 3, HEAD_DIMS)
    assert (grads[3].abs().amax(dim=-1) > 0).all()


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


@pytest.mark.parametrize('options', [dict(), dict(count_from='query', bias='lookup')],
                         ids=['published', 'lookup'])
def test_chunked_keeps_no_square_tensor_for_backward(options):
    grid = TokenGrid(8, 8, num_prefix=1)
    q, k, v = random_qkv(grid, batch=1, dtype=torch.float32, requires_grad=True)
    sape = build_sape(impl='chunked', chunk_size=16, dtype=torch.float32, **options)
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
    (dict(count_from='query_end'), 'count_from'),
    (dict(bias='l2'), 'bias'),
    (dict(table_values='scalars'), 'table_values'),
    (dict(impl='flex'), "bias='lookup'"),
    (dict(bias='lookup', distance='rms'), 'distance'),
    (dict(bias='lookup', negative_bias=True), 'negative_bias'),
    (dict(gate_temperature=0), 'gate_temperature'),
    (dict(table_std=-1.), 'table_std'),
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
    # M = 5 rows e[0..M-1] per axis, as in the authors' code.
    assert names == {'position_tables.1': (2, 5, 8), 'position_tables.3': (2, 5, 8)}
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
    # The layout before the per-block convention: 'position_tables.layer_<block>',
    # and tables of M+1 rows, whose last row e[M] was never read: it is dropped.
    tables = {layer: torch.randn(2, 6, 8) for layer in (1, 3)}
    sape.load_state_dict({f'position_tables.layer_{layer}': table
                          for layer, table in tables.items()})
    for layer, table in tables.items():
        torch.testing.assert_close(sape.position_tables[str(layer)].data, table[:, :5],
                                   rtol=0, atol=0)
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


# --- 7. query-relative contextual positions (docs/method.md#9-sape-query-relative) ------


QUERY_GRIDS = [TokenGrid(2, 4, num_prefix=1), TokenGrid(3, 3, num_prefix=0),
               TokenGrid(4, 2, num_prefix=2)]
QUERY_IMPLS = {'distance': ['dense', 'chunked'], 'lookup': ['dense', 'chunked', 'fused']}


def build_query_relative(bias, table_values='embeddings', **options):
    # M=3: signed positions clamp at +-2 in lines of 4 tokens, and are fractional.
    return build_sape(count_from='query', bias=bias, table_values=table_values, **options)


def check_paths_against_naive(sape, q, k, v, grid, naive_options, impls, pad_mask=None):
    """Every impl, forward and backward, against the naive reference (float64)."""
    tables = layer0_tables(sape)
    expected = naive_attention(q, k, v, tables, grid, pad_mask=pad_mask, **naive_options)
    expected_grads = grads_of(expected, (q, k, v, tables))
    padded = grid.replace(pad_mask=pad_mask)
    bias = sape.attention_bias(0, q, k, padded)
    assert bias[..., grid.num_prefix:, grid.num_prefix:].abs().max() > 0.1
    if grid.num_prefix:
        assert bias[..., :grid.num_prefix, :].abs().max() == 0
        assert bias[..., :grid.num_prefix].abs().max() == 0
    for impl in impls:
        sape.impl = impl
        actual = sape.attention(0, q, k, v, padded)
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9, msg=impl)
        for got, want in zip(grads_of(actual, (q, k, v, tables)), expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9, msg=impl)


@pytest.mark.parametrize('grid', QUERY_GRIDS, ids=lambda g: f'{g.height}x{g.width}p{g.num_prefix}')
@pytest.mark.parametrize('bias', ['lookup', 'distance'])
@pytest.mark.parametrize('table_values', ['embeddings', 'head_scalars'])
def test_query_relative_matches_naive_reference(grid, bias, table_values):
    q, k, v = random_qkv(grid, requires_grad=True)
    sape = build_query_relative(bias, table_values, chunk_size=4)
    assert layer0_tables(sape).shape == (2, 5, HEAD_DIMS if table_values == 'embeddings'
                                         else HEADS)
    options = dict(count_from='query', bias=bias, table_values=table_values)
    check_paths_against_naive(sape, q, k, v, grid, options, QUERY_IMPLS[bias])


@pytest.mark.parametrize('options', [
    dict(bias='lookup', embed_with='key', position_mode='relative'),
    dict(bias='lookup', gate_temperature=0.5, scale_gates=False),
    dict(bias='distance', distance='rms', position_mode='relative'),
    dict(bias='distance', distance='squared', impl='fused'),
    dict(bias='lookup', count_from='row_end'),  # CoPE's logit form, suffix counts
], ids=str)
def test_query_relative_options_match_naive_reference(options):
    grid = TokenGrid(3, 4, num_prefix=1)
    q, k, v = random_qkv(grid, requires_grad=True)
    options = {'count_from': 'query', **options}
    impls = [options.pop('impl')] if 'impl' in options else QUERY_IMPLS[options['bias']]
    sape = build_sape(chunk_size=5, **options)
    check_paths_against_naive(sape, q, k, v, grid, options, impls)


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
def test_flex_impl_forward_matches_naive_on_cpu(monkeypatch):
    from torch.nn.attention.flex_attention import flex_attention

    import mmsape.ops.sape2.lookup_attention as lookup_attention

    # Compiling FlexAttention on CPU takes about a minute: its eager reference
    # evaluates the same score_mod.
    monkeypatch.setattr(lookup_attention, '_compiled_flex_attention', lambda: flex_attention)
    grid = TokenGrid(3, 4, num_prefix=1)
    q, k, v = random_qkv(grid, dtype=torch.float32)
    sape = build_query_relative('lookup', impl='flex', dtype=torch.float32)
    expected = naive_attention(*(t.double() for t in (q, k, v)), layer0_tables(sape).double(),
                               grid, count_from='query', bias='lookup')
    with torch.no_grad():
        actual = sape.attention(0, q, k, v, grid)
    torch.testing.assert_close(actual, expected.float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='no backward on CPU'):
        sape.attention(0, q.requires_grad_(), k, v, grid)


@pytest.mark.parametrize('bias', ['lookup', 'distance'])
def test_padding_cells_have_gate_zero(bias):
    grid = TokenGrid(3, 4, num_prefix=1)
    pad_mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    pad_mask[0, :, 3] = True  # a padded column (batch padding, right side)
    pad_mask[1, 2, :] = True  # a padded row
    pad_mask[1, 0, 1] = True  # an odd cell
    q, k, v = random_qkv(grid, requires_grad=True)
    sape = build_query_relative(bias, chunk_size=4)
    options = dict(count_from='query', bias=bias)
    check_paths_against_naive(sape, q, k, v, grid, options, QUERY_IMPLS[bias], pad_mask)
    # The mask changes the bias (against the naive reference without it).
    unmasked = naive_logits(q, k, layer0_tables(sape), grid, **options)
    assert not torch.allclose(sape.attention_bias(0, q, k, grid.replace(pad_mask=pad_mask)),
                              unmasked - q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIMS))
    with pytest.raises(ValueError, match='pad_mask'):
        sape.attention(0, q, k, v, grid.replace(pad_mask=pad_mask[:1]))


@pytest.mark.parametrize('bias', ['lookup', 'distance'])
def test_windows_with_padding_match_naive_reference(bias):
    """ViTDet windows in PosEncViT: each window's attention gets the window grid
    with its padding mask, and matches the reference with those gates at 0."""
    from mmsape.models import PosEncViT
    torch.manual_seed(0)
    model = PosEncViT(arch=dict(embed_dims=HEADS * HEAD_DIMS, num_layers=2, num_heads=HEADS,
                                feedforward_channels=32),
                      img_size=24, patch_size=4, with_cls_token=False, out_type='featmap',
                      window_size=4, global_attn_indexes=(1, ),
                      pos_encoding=dict(type='SaPE2', count_from='query', bias=bias,
                                        num_positions=3, impl='chunked')).double().eval()
    sape = model.pos_encoding
    for table in sape.position_tables.values():
        table.data.normal_(std=0.5)
    calls = []
    attention = sape.attention

    def recording_attention(layer_index, q, k, v, grid, dropout_p=0., tokens=None):
        out = attention(layer_index, q, k, v, grid, dropout_p=dropout_p, tokens=tokens)
        calls.append((layer_index, q, k, v, grid, out))
        return out

    sape.attention = recording_attention
    with torch.no_grad():
        model(torch.randn(1, 3, 24, 20, dtype=torch.float64))  # 6x5 patches: padded windows
    layer_index, q, k, v, grid, out = calls[0]
    assert layer_index == 0 and grid.hw == (4, 4) and grid.pad_mask is not None
    assert grid.pad_mask.any() and not grid.pad_mask.all()
    assert calls[1][4].hw == (6, 5) and calls[1][4].pad_mask is None  # the global block
    expected = naive_attention(q, k, v, sape.position_tables['0'].detach(), grid,
                               count_from='query', bias=bias, pad_mask=grid.pad_mask)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # Every path, forward and backward, on this layer's windows.
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    check_paths_against_naive(sape, q, k, v, grid.replace(pad_mask=None),
                              dict(count_from='query', bias=bias), QUERY_IMPLS[bias],
                              grid.pad_mask)


def test_uniform_row_gets_offset_dependent_bias_only_when_counting_from_the_query():
    """The finding of issue 12: as published (counts to the row's end), identical
    tokens get identical SaPE vectors, so a uniform image gets the same bias
    between every pair of tokens (here 0): no position at all. Counting from the
    query, the bias of a query to the tokens of its row changes with the offset."""
    grid = TokenGrid(3, 9, num_prefix=1)
    token = torch.randn(1, HEADS, 1, HEAD_DIMS, dtype=torch.float64)
    q = k = token.expand(1, -1, grid.num_tokens, -1)

    def cell(row, column):
        return 1 + row * 9 + column

    query, keys = cell(1, 3), [cell(1, c) for c in range(7)]  # offsets -3..3
    published = build_sape(num_positions=10).attention_bias(0, q, k, grid)
    assert published.abs().max() < 1e-6
    for bias in ('lookup', 'distance'):
        relative = build_query_relative(bias, num_positions=10)
        relative_bias = relative.attention_bias(0, q, k, grid)[0]
        values = relative_bias[:, query, keys]
        gaps = (values[:, :, None] - values[:, None, :]).abs()
        off_diagonal = ~torch.eye(7, dtype=torch.bool)
        # Every offset (-3..3) gives a different bias, in every head.
        assert gaps[:, off_diagonal].min() > 1e-4, bias
        if bias == 'lookup':
            # With uniform content it is an axial relative-position bias: the
            # same offsets give the same bias in another row and column.
            other = relative_bias[:, cell(2, 5), [cell(2, c) for c in range(2, 9)]]
            torch.testing.assert_close(other, values, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('count_from,equivariant', [('query', True), ('row_end', False)])
def test_whole_patch_shift_permutes_the_lookup_bias(count_from, equivariant):
    """Shift the content by whole patches: for every query and key whose shifted
    cells are inside the grid, the query-relative lookup bias moves with them
    exactly (the counts cover only the cells between query and key). Counting to
    the row's end, the counts cover cells up to the border and change."""
    height, width, shift = 6, 7, (1, 2)
    grid = TokenGrid(height, width, num_prefix=1)
    generator = torch.Generator().manual_seed(0)
    channels = 6
    content = torch.randn(height, width, channels, generator=generator, dtype=torch.float64)
    background = torch.randn(channels, generator=generator, dtype=torch.float64)
    shifted = background.expand(height, width, channels).clone()
    shifted[shift[0]:, shift[1]:] = content[:height - shift[0], :width - shift[1]]
    project_q, project_k = (torch.randn(channels, HEADS * HEAD_DIMS, generator=generator,
                                        dtype=torch.float64) for _ in range(2))
    prefix = torch.randn(1, channels, generator=generator, dtype=torch.float64)

    def qk(cells):
        tokens = torch.cat([prefix, cells.reshape(-1, channels)])
        return [(tokens @ w).reshape(1, -1, HEADS, HEAD_DIMS).transpose(1, 2)
                for w in (project_q, project_k)]

    sape = build_sape(count_from=count_from, bias='lookup', num_positions=10)
    before = sape.attention_bias(0, *qk(content), grid)
    after = sape.attention_bias(0, *qk(shifted), grid)
    inside = [(r, c) for r in range(height - shift[0]) for c in range(width - shift[1])]
    old = torch.tensor([1 + r * width + c for r, c in inside])
    new = torch.tensor([1 + (r + shift[0]) * width + c + shift[1] for r, c in inside])
    moved = after[..., new[:, None], new]
    if equivariant:
        torch.testing.assert_close(moved, before[..., old[:, None], old], rtol=1e-12,
                                   atol=1e-12)
    else:
        assert (moved - before[..., old[:, None], old]).abs().max() > 1e-3


def test_query_relative_option_combinations_build_and_run():
    grid = TokenGrid(2, 3, num_prefix=1)
    q, k, v = random_qkv(grid, batch=1, dtype=torch.float32)
    combos = itertools.product(['row_end', 'query'], ['distance', 'lookup'],
                               ['embeddings', 'head_scalars'],
                               ['auto', 'dense', 'chunked', 'fused', 'flex'])
    built = 0
    for count_from, bias, table_values, impl in combos:
        options = dict(count_from=count_from, bias=bias, table_values=table_values, impl=impl,
                       distance='squared' if impl == 'fused' and bias == 'distance' else 'l2')
        if impl == 'flex' and bias != 'lookup':
            with pytest.raises(ValueError, match="bias='lookup'"):
                build_sape(dtype=torch.float32, **options)
            continue
        sape = build_sape(dtype=torch.float32, **options)
        if impl == 'flex':
            continue  # compiling FlexAttention on CPU takes a minute; see the flex test
        out = sape.attention(0, q, k, v, grid)
        assert out.shape == v.shape and torch.isfinite(out).all()
        built += 1
    assert built == 2 * 2 * 2 * 4


def test_auto_impl_for_the_lookup_bias(monkeypatch):
    from types import SimpleNamespace
    sape = build_query_relative('lookup')
    grid = TokenGrid(4, 4)
    cuda_q = SimpleNamespace(device=torch.device('cuda'), dtype=torch.float32)
    assert sape.resolve_impl(grid, cuda_q) == 'flex'
    assert sape.resolve_impl(grid, cuda_q, dropout_p=0.1) == 'fused'
    assert sape.resolve_impl(grid) == 'fused'
    q32 = torch.zeros(1, HEADS, 16, HEAD_DIMS)
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')
    assert sape.resolve_impl(grid, q32) == 'fused'
    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    if load_cpu_kernel() is not None:
        assert sape.resolve_impl(grid, q32) == 'chunked'
        assert sape.resolve_impl(grid, q32.bfloat16()) == 'chunked'  # computed in float32
        assert sape.resolve_impl(grid, q32, dropout_p=0.1) == 'fused'
        assert sape.resolve_impl(grid, q32.double()) == 'fused'


@pytest.mark.parametrize('impl', ['chunked', 'fused', 'dense'])
def test_lookup_dropout_and_half_precision(impl):
    grid = TokenGrid(3, 4, num_prefix=1)
    q, k, v = random_qkv(grid, dtype=torch.float32, requires_grad=True)
    sape = build_query_relative('lookup', impl=impl, chunk_size=4, table_std=0.1,
                                dtype=torch.float32)
    torch.manual_seed(0)
    dropped = sape.attention(0, q, k, v, grid, dropout_p=0.5)
    reference = sape.attention(0, q, k, v, grid)
    assert not torch.allclose(dropped, reference)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(dropped.sum(), (q, k, v)))
    half = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = sape.attention(0, *half, grid)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


def test_table_init_defaults_by_form():
    """The authors' std 0.02 for the published form; 0.2 for the lookup bias,
    chosen by the design sweep (tools/analysis/sape2_design_sweep.py)."""
    options = dict(embed_dims=64, num_heads=2, num_layers=1, num_positions=64)
    torch.manual_seed(0)
    published = SaPE2(**options).position_tables['0']
    lookup = SaPE2(count_from='query', bias='lookup', **options).position_tables['0']
    chosen = SaPE2(count_from='query', bias='lookup', table_std=0.05, **options)
    assert abs(published.std().item() - 0.02) < 0.002
    assert abs(lookup.std().item() - 0.2) < 0.02
    assert abs(chosen.position_tables['0'].std().item() - 0.05) < 0.005
    assert SaPE2(table_std=0., **options).position_tables['0'].abs().max() == 0


def naive_parabola_bias(q, k, coefficients, height, width, num_prefix):
    """``table_values='parabola'`` from the equations, by loops: the signed gated
    count r between the query and each key along its row (x) and its column (y),
    read as ``-softplus(q . w_a) r^2 + (q . w_b) r`` per axis; prefix rows and
    columns 0."""
    batch, heads, tokens, dims = q.shape
    bias = q.new_zeros(batch, heads, tokens, tokens)

    def count(b, h, u, cells):
        return sum((torch.sigmoid(u @ k[b, h, num_prefix + c] / math.sqrt(dims))
                    for c in cells), q.new_zeros(()))

    for b in range(batch):
        for h in range(heads):
            for i in range(height):
                for j in range(width):
                    u = q[b, h, num_prefix + i * width + j]
                    terms = [(torch.nn.functional.softplus(u @ w_a), u @ w_b)
                             for w_a, w_b in coefficients]
                    for i2 in range(height):
                        for j2 in range(width):
                            rx = (count(b, h, u, [i * width + m for m in range(j + 1, j2 + 1)])
                                  - count(b, h, u, [i * width + m for m in range(j2, j)]))
                            ry = (count(b, h, u, [m * width + j for m in range(i + 1, i2 + 1)])
                                  - count(b, h, u, [m * width + j for m in range(i2, i)]))
                            value = sum(-a * r * r + s * r for (a, s), r in zip(terms, (rx, ry)))
                            bias[b, h, num_prefix + i * width + j,
                                 num_prefix + i2 * width + j2] = value
    return bias


@pytest.mark.parametrize('impl', ['auto', 'dense', 'fused'])
def test_parabola_reading_matches_the_equations(impl):
    """``table_values='parabola'`` (mmsape's extension): attention and gradients
    equal softmax(q.k / sqrt(d) + naive bias) v, on a non-square grid with a
    class token."""
    torch.manual_seed(0)
    sape = SaPE2(embed_dims=16, num_heads=2, num_layers=1, count_from='query', bias='lookup',
                 table_values='parabola', impl=impl)
    assert sape.position_tables['0'].shape == (2, 2, 8)  # axes, (w_a, w_b), head dim
    grid = TokenGrid(3, 4, 1)
    q, k, v = (torch.randn(1, 2, 13, 8, requires_grad=True) for _ in range(3))
    out = sape.attention(0, q, k, v, grid)
    out.square().sum().backward()
    coefficients = sape.position_tables['0']
    grads = [t.grad.clone() for t in (q, k, v, coefficients)]
    for t in (q, k, v, coefficients):
        t.grad = None
    q64, k64, v64, c64 = (t.detach().double().requires_grad_() for t in (q, k, v, coefficients))
    bias = naive_parabola_bias(q64, k64, c64, 3, 4, 1)
    expected = torch.softmax(q64 @ k64.transpose(-1, -2) / math.sqrt(8) + bias, -1) @ v64
    expected.square().sum().backward()
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)
    for got, want in zip(grads, (q64.grad, k64.grad, v64.grad, c64.grad)):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-3)


def test_parabola_reading_does_not_saturate():
    """Counts beyond M-1 are read by the parabola, not clamped as table positions are."""
    sape = SaPE2(embed_dims=8, num_heads=1, num_layers=1, count_from='query', bias='lookup',
                 table_values='parabola', num_positions=10)
    grid = TokenGrid(1, 30, 0)
    q = torch.full((1, 1, 30, 8), 3.)  # q.k / sqrt(d) = 25: every gate is 1
    x_vectors, _ = sape.layer_vectors(0, q, q, grid)
    w_a, w_b = sape.position_tables['0'][0]
    curvature = torch.nn.functional.softplus(q[0, 0, 0] @ w_a)
    expected = -curvature * 29**2 + (q[0, 0, 0] @ w_b) * 29
    torch.testing.assert_close(x_vectors[0, 0, 0, 29], expected, rtol=1e-4, atol=1e-3)
