"""Tests of the lookup-bias attention kernels of query-relative SaPE²
(mmsape.ops.sape2.lookup_attention and the compiled CPU kernel).

The reference is the dense attention with the bias built by explicit loops over
query and key tokens, ``b_in = s^x_i[x_n] + s^y_i[y_n]`` between patch tokens, in
float64.
"""
import math

import pytest
import torch

from mmsape.ops.sape2 import (
    CPU_KERNEL_ENV,
    flex_lookup_attention,
    fused_squared_distance_qk,
    lookup_bias,
    lookup_block_attention,
    lookup_factors,
)

from builders import kernel_that_ran, require_cpu_kernel

HEADS = 2
HEAD_DIMS = 8

pytestmark = pytest.mark.usefixtures('single_thread')


def naive_lookup_bias(x_vectors, y_vectors, height, width, num_prefix):
    """(..., N, N) bias from explicit loops over (row, column) of queries and keys."""
    num_tokens = num_prefix + height * width
    bias = x_vectors.new_zeros(*x_vectors.shape[:-2], num_tokens, num_tokens)
    for i in range(height * width):
        for n in range(height * width):
            row, column = divmod(n, width)
            bias[..., num_prefix + i, num_prefix + n] = (x_vectors[..., i, column]
                                                         + y_vectors[..., i, row])
    return bias


def dense_reference(q, k, v, x_vectors, y_vectors, height, width, num_prefix):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    logits = logits + naive_lookup_bias(x_vectors, y_vectors, height, width, num_prefix)
    return torch.softmax(logits, dim=-1) @ v


def lookup_inputs(height, width, num_prefix, batch=2, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    num_tokens = num_prefix + height * width
    q, k, v = (torch.randn(batch, HEADS, num_tokens, HEAD_DIMS, generator=generator,
                           dtype=dtype).requires_grad_() for _ in range(3))
    x_vectors, y_vectors = (torch.randn(batch, HEADS, height * width, length,
                                        generator=generator, dtype=dtype).requires_grad_()
                            for length in (width, height))
    return q, k, v, x_vectors, y_vectors


def grads_of(output, tensors, seed=1):
    weight = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed),
                         dtype=output.dtype)
    return torch.autograd.grad((output * weight).sum(), tensors)


LAYOUTS = [(3, 4, 1), (4, 2, 0), (2, 5, 2)]


@pytest.mark.parametrize('layout', LAYOUTS, ids=str)
def test_dense_bias_and_factors_match_loops(layout):
    _, _, _, x_vectors, y_vectors = lookup_inputs(*layout)
    expected = naive_lookup_bias(x_vectors, y_vectors, *layout)
    torch.testing.assert_close(lookup_bias(x_vectors, y_vectors, *layout), expected,
                               rtol=0, atol=0)
    query_factors, key_factors = lookup_factors(x_vectors, y_vectors, *layout)
    torch.testing.assert_close(query_factors @ key_factors.transpose(-1, -2), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('layout', LAYOUTS, ids=str)
@pytest.mark.parametrize('block_size', [1, 4, 64])
def test_python_block_kernel_matches_reference_with_gradients(layout, block_size):
    inputs = lookup_inputs(*layout)
    actual = lookup_block_attention(*inputs, *layout, block_size=block_size)
    assert kernel_that_ran(actual) == 'sape2_attention_python'
    expected = dense_reference(*inputs, *layout)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads_of(actual, inputs), grads_of(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('layout', LAYOUTS, ids=str)
def test_fused_sdpa_on_augmented_qk_matches_reference(layout):
    q, k, v, x_vectors, y_vectors = inputs = lookup_inputs(*layout)
    query_factors, key_factors = lookup_factors(x_vectors, y_vectors, *layout)
    q_aug, k_aug = fused_squared_distance_qk(q, k, [query_factors], [key_factors])
    assert q_aug.shape[-1] % 8 == 0
    actual = torch.nn.functional.scaled_dot_product_attention(q_aug, k_aug, v, scale=1.)
    expected = dense_reference(*inputs, *layout)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads_of(actual, inputs), grads_of(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
@pytest.mark.parametrize('layout', LAYOUTS, ids=str)
def test_flex_score_mod_forward_matches_reference_on_cpu(layout):
    # FlexAttention runs forward only on CPU (PyTorch); its eager reference
    # evaluates the same score_mod as the compiled kernel of CUDA.
    inputs = [t.detach().float() for t in lookup_inputs(*layout)]
    with torch.no_grad():
        actual = flex_lookup_attention(*inputs, *layout, compile=False)
    expected = dense_reference(*[t.double() for t in inputs], *layout)
    torch.testing.assert_close(actual, expected.float(), rtol=1e-5, atol=1e-6)


def test_flex_refuses_training_on_cpu_with_a_clear_error():
    inputs = [t.float() for t in lookup_inputs(2, 3, 1)]
    with pytest.raises(ValueError, match="no backward on CPU.*impl='chunked'"):
        flex_lookup_attention(*inputs, 2, 3, 1, compile=False)


def test_mismatched_grid_raises():
    inputs = lookup_inputs(3, 4, 1)
    with pytest.raises(ValueError, match='4x3 grid with 1 prefix'):
        lookup_block_attention(*inputs, 4, 3, 1)


@pytest.fixture
def compiled_kernel(monkeypatch):
    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    require_cpu_kernel()


# Token counts that cross the compiled kernel's 128 x 128 tiles, segments that
# cross tile borders, and a prefix in the first tile.
TILE_CROSSING_LAYOUTS = [(20, 15, 1), (7, 41, 2), (16, 16, 0), (1, 3, 0)]


@pytest.mark.parametrize('layout', TILE_CROSSING_LAYOUTS, ids=str)
def test_compiled_kernel_matches_float64_reference(layout, compiled_kernel):
    inputs64 = lookup_inputs(*layout, batch=1)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    actual = lookup_block_attention(*inputs32, *layout)
    assert kernel_that_ran(actual) == 'sape2_lookup_attention_cpu'
    query_factors, key_factors = lookup_factors(*inputs64[3:], *layout)
    logits = inputs64[0] @ inputs64[1].transpose(-1, -2) / math.sqrt(HEAD_DIMS)
    # The loop reference is too slow at these sizes; the factor form equals it
    # (test_dense_bias_and_factors_match_loops).
    expected = torch.softmax(logits + query_factors @ key_factors.transpose(-1, -2),
                             dim=-1) @ inputs64[2]
    torch.testing.assert_close(actual, expected.float(), rtol=1e-5, atol=1e-5)
    weight = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1),
                         dtype=expected.dtype)
    got_grads = torch.autograd.grad((actual * weight.float()).sum(), inputs32)
    for got, want in zip(got_grads, torch.autograd.grad((expected * weight).sum(), inputs64)):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_compiled_kernel_saves_no_square_tensor_and_threads_agree(compiled_kernel):
    layout = (12, 9, 1)
    inputs = [t.detach().float().requires_grad_() for t in lookup_inputs(*layout)]
    saved_shapes = []

    def pack(tensor):
        saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        single = lookup_block_attention(*inputs, *layout)
    num_tokens = inputs[0].shape[-2]
    assert saved_shapes
    assert all(sum(size == num_tokens for size in shape) <= 1 for shape in saved_shapes)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        multi = lookup_block_attention(*inputs, *layout)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(multi, single, rtol=0, atol=0)


def test_float32_without_compiled_kernel_takes_python_kernel(monkeypatch):
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')
    layout = (3, 4, 1)
    inputs = [t.detach().float().requires_grad_() for t in lookup_inputs(*layout)]
    out = lookup_block_attention(*inputs, *layout)
    assert kernel_that_ran(out) == 'sape2_attention_python'
