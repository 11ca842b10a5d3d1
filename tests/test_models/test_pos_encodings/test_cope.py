"""Tests of CoPE1D against a naive loop implementation of the CoPE formulas (float64)."""
import math

import pytest
import torch

from mmsape.models.pos_encodings import CoPE1D, build_pos_encoding
from mmsape.models.pos_encodings.base import TokenGrid

EMBED_DIMS, NUM_HEADS = 16, 2
HEAD_DIMS = EMBED_DIMS // NUM_HEADS


def backbone_args(num_prefix_tokens=1, num_layers=2):
    return dict(embed_dims=EMBED_DIMS, num_heads=NUM_HEADS, num_layers=num_layers,
                base_grid=(4, 4), num_prefix_tokens=num_prefix_tokens)


def naive_cope_attention(q, k, v, table, num_prefix):
    """softmax(q.k / sqrt(d) + z_i(p_ij)) v, one pair at a time.

    g_ij = sigmoid(q_i.k_j / sqrt(d)), p_ij = sum_{m >= j} g_im over patch tokens,
    clamped to [0, M - 1], z_i(p) linear between q_i.e[floor p] and q_i.e[ceil p].
    """
    batch, heads, num_tokens, head_dims = q.shape
    num_positions = table.shape[0]
    logits = torch.zeros(batch, heads, num_tokens, num_tokens, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(num_tokens):
                for j in range(num_tokens):
                    logits[b, h, i, j] = (q[b, h, i] @ k[b, h, j]) / math.sqrt(head_dims)
                if i < num_prefix:
                    continue  # prefix rows: no bias
                gates = {m: torch.sigmoid(logits[b, h, i, m]).item()
                         for m in range(num_prefix, num_tokens)}
                for j in range(num_prefix, num_tokens):
                    position = sum(gates[m] for m in range(j, num_tokens))
                    position = min(max(position, 0.), num_positions - 1)
                    low, high = math.floor(position), math.ceil(position)
                    frac = position - low
                    bias = ((1 - frac) * (q[b, h, i] @ table[low]) +
                            frac * (q[b, h, i] @ table[high]))
                    logits[b, h, i, j] = logits[b, h, i, j] + bias
    return logits.softmax(-1) @ v


@pytest.mark.parametrize('hw', [(2, 3), (3, 2), (1, 5), (4, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1, 2])
@pytest.mark.parametrize('num_positions', [3, 64])  # 3: most positions saturate
def test_cope_matches_naive_loops(hw, num_prefix, num_positions):
    torch.manual_seed(0)
    cope = CoPE1D(**backbone_args(num_prefix_tokens=num_prefix),
                  num_positions=num_positions).double()
    with torch.no_grad():  # larger than the .02 init, so that the bias matters
        for table in cope.position_embeds.values():
            table.normal_(std=1.)
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    q, k, v = torch.randn(3, 2, NUM_HEADS, grid.num_tokens, HEAD_DIMS, dtype=torch.float64)
    out = cope.attention(1, q, k, v, grid)
    expected = naive_cope_attention(q, k, v, cope.position_embeds['1'].detach(), num_prefix)
    torch.testing.assert_close(out, expected)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(out[:, :, num_prefix:], plain[:, :, num_prefix:])


def test_cope_positions_count_gates_from_the_end():
    """With all gates at sigmoid(0) = 1/2, p_ij = (N - j) / 2 in raster order, so the
    bias for key j reads the table at (N - j) / 2 (interpolated at half integers)."""
    cope = CoPE1D(**backbone_args(num_prefix_tokens=0), num_positions=16).double()
    table = torch.randn(16, HEAD_DIMS, dtype=torch.float64)
    with torch.no_grad():
        cope.position_embeds['0'].copy_(table)
    num_tokens = 7
    q = torch.zeros(1, 1, num_tokens, HEAD_DIMS, dtype=torch.float64)
    q[..., 0] = 1.
    k = torch.zeros_like(q)  # q.k = 0: every gate is 1/2
    bias = cope.attention_bias(0, q, k, TokenGrid(1, num_tokens))[0, 0, 0]
    expected = []
    for j in range(num_tokens):
        position = (num_tokens - j) / 2
        low = math.floor(position)
        expected.append(table[low, 0] + (position - low) * (table[math.ceil(position), 0] -
                                                            table[low, 0]))
    torch.testing.assert_close(bias, torch.stack(expected))


def test_cope_prefix_rows_and_columns_are_plain():
    torch.manual_seed(0)
    cope = CoPE1D(**backbone_args(num_prefix_tokens=2))
    grid = TokenGrid(2, 3, num_prefix=2)
    q, k, v = torch.randn(3, 1, NUM_HEADS, grid.num_tokens, HEAD_DIMS)
    out = cope.attention(0, q, k, v, grid)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out[:, :, :2], plain[:, :, :2])  # prefix queries unbiased


def test_cope_layers_option_and_plain_attention_elsewhere():
    torch.manual_seed(0)
    cope = CoPE1D(**backbone_args(num_layers=4), layers=(1, -1))
    assert cope.layers == (1, 3) and sorted(cope.position_embeds) == ['1', '3']
    grid = TokenGrid(2, 2, num_prefix=1)
    q, k, v = torch.randn(3, 1, NUM_HEADS, grid.num_tokens, HEAD_DIMS)
    torch.testing.assert_close(cope.attention(0, q, k, v, grid),
                               torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_cope_init_builder_weight_decay_and_layer_index():
    torch.manual_seed(0)
    cope = build_pos_encoding(dict(type='CoPE1D', num_positions=512), **backbone_args())
    assert isinstance(cope, CoPE1D) and cope.acts_in_attention
    table = cope.position_embeds['0']
    assert table.shape == (512, HEAD_DIMS)  # shared by the heads
    assert abs(table.std().item() - .02) < .003
    assert cope.no_weight_decay() == {'position_embeds.0', 'position_embeds.1'}
    assert cope.layer_index_of('position_embeds.1') == 1
    assert cope.layer_index_of('other.0') is None


def test_cope_bad_options():
    with pytest.raises(ValueError, match='num_positions'):
        CoPE1D(**backbone_args(), num_positions=0)
    with pytest.raises(ValueError, match='layers'):
        CoPE1D(**backbone_args(num_layers=2), layers=(2, ))


def test_cope_half_precision_keeps_dtype():
    torch.manual_seed(0)
    cope = CoPE1D(**backbone_args())
    grid = TokenGrid(3, 3, num_prefix=1)
    q, k, v = torch.randn(3, 2, NUM_HEADS, grid.num_tokens, HEAD_DIMS, dtype=torch.bfloat16)
    out = cope.attention(0, q, k, v, grid)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize('hw', [(4, 4), (3, 5), (1, 6), (6, 1)])
@pytest.mark.parametrize('num_prefix', [0, 1, 3])
@pytest.mark.parametrize('batch', [1, 3])
def test_forward_backward_any_grid(hw, num_prefix, batch):
    torch.manual_seed(0)
    cope = CoPE1D(**backbone_args(num_prefix_tokens=num_prefix), num_positions=4)
    grid = TokenGrid(*hw, num_prefix=num_prefix)
    q, k, v = (torch.randn(batch, NUM_HEADS, grid.num_tokens, HEAD_DIMS, requires_grad=True)
               for _ in range(3))
    out = cope.attention(0, q, k, v, grid)
    out = cope.attention(1, out, out, out, grid)
    assert out.shape == q.shape and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for tensor in (q, k, v):
        assert torch.isfinite(tensor.grad).all()
    for name, param in cope.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
