"""Tests of the exact SaPE² block-attention kernels (mmsape.ops.sape2).

The kernels are compared with the dense attention built from the functional
building blocks (an N x N bias) in float64, with gradients, and with
``torch.autograd.gradcheck``.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsape.models.pos_encodings.base import TokenGrid
from mmsape.ops.sape2 import (
    CPU_KERNEL_ENV,
    REQUIRE_COMPILED_KERNELS_ENV,
    load_cpu_kernel,
    rounding_floor,
    safe_sqrt,
    sape2_attention_cpu,
    sape2_block_attention,
    squared_distance_factors,
)

from builders import kernel_factors, kernel_that_ran, require_cpu_kernel

HEADS = 2
HEAD_DIMS = 8


# The tensors here are tiny: a thread pool only adds overhead and contention.
pytestmark = pytest.mark.usefixtures('single_thread')


#: The custom operators of the two kernels (see mmsape.ops.sape2.attention_autograd).
PYTHON_KERNEL = 'sape2_attention_python'
COMPILED_KERNEL = 'sape2_attention_cpu'


def random_qkv(grid, batch=2, dtype=torch.float64, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, HEADS, grid.num_tokens, HEAD_DIMS)
    return [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(requires_grad)
            for _ in range(3)]


def grads_of(output, tensors, seed=1):
    weight = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed),
                         dtype=output.dtype)
    return torch.autograd.grad((output * weight).sum(), tensors)


# --- the block kernels behind SaPE2(impl='chunked') -------------------------------------


def kernel_inputs(grid, num_axes=2, dtype=torch.float64, seed=0, scale=1.):
    """q, k, v and per-axis distance factors with prefix rows, all requiring grad."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, HEADS, grid.num_tokens, HEAD_DIMS, generator=generator,
                           dtype=dtype).requires_grad_() for _ in range(3))
    lengths = (grid.width, grid.height)[:num_axes]
    vectors = [torch.randn(1, HEADS, grid.num_patches, length, generator=generator,
                           dtype=dtype) * scale for length in lengths]
    factors = [squared_distance_factors(s, grid.num_prefix) for s in vectors]
    query_factors = [f[0].detach().requires_grad_() for f in factors]
    key_factors = [f[1].detach().requires_grad_() for f in factors]
    return q, k, v, query_factors, key_factors


def dense_reference(q, k, v, query_factors, key_factors, root, sign):
    """The same attention with the dense functional building blocks (N x N bias)."""
    if root:
        bias = sum(safe_sqrt(qf @ kf.transpose(-1, -2), rounding_floor(kf))
                   for qf, kf in zip(query_factors, key_factors))
    else:
        bias = torch.cat(query_factors, -1) @ torch.cat(key_factors, -1).transpose(-1, -2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + sign * bias,
                         dim=-1) @ v


def run_kernel(q, k, v, query_factors, key_factors, root, sign, block_size):
    query_factors, key_factors, floors = kernel_factors(query_factors, key_factors, root)
    return sape2_block_attention(q, k, v, query_factors, key_factors, floors, root=root,
                                 sign=sign, block_size=block_size, symmetric=True)


@pytest.mark.parametrize('root', [True, False], ids=['l2', 'squared'])
def test_block_kernel_gradcheck(root):
    grid = TokenGrid(2, 3, num_prefix=1)
    generator = torch.Generator().manual_seed(0)
    q, k, v = random_qkv(grid, batch=1, requires_grad=True)
    vectors = [(torch.randn(1, HEADS, grid.num_patches, length, generator=generator,
                            dtype=torch.float64) * 0.3).requires_grad_()
               for length in (grid.width, grid.height)]

    def attend(q, k, v, x_vectors, y_vectors):
        # Through the SaPE vectors, as in the module: perturbing one factor entry
        # on its own would make a token's distance to itself non-zero, where the
        # root has no derivative.
        factors = [squared_distance_factors(s, grid.num_prefix) for s in (x_vectors, y_vectors)]
        return run_kernel(q, k, v, [f[0] for f in factors], [f[1] for f in factors], root,
                          -1., block_size=3)

    assert torch.autograd.gradcheck(attend, (q, k, v, *vectors), eps=1e-6, atol=1e-6,
                                    rtol=1e-5)


@pytest.mark.parametrize('grid', [TokenGrid(4, 4, num_prefix=1), TokenGrid(3, 5, num_prefix=2),
                                  TokenGrid(5, 2, num_prefix=0)],
                         ids=lambda g: f'{g.height}x{g.width}p{g.num_prefix}')
@pytest.mark.parametrize('root,sign', [(True, 1.), (True, -1.), (False, 1.)],
                         ids=['l2', 'l2-negative', 'squared'])
@pytest.mark.parametrize('block_size', [1, 4, 64])
def test_block_kernel_equals_dense_with_gradients(grid, root, sign, block_size):
    q, k, v, query_factors, key_factors = kernel_inputs(grid)
    inputs = (q, k, v, *query_factors, *key_factors)
    actual = run_kernel(q, k, v, query_factors, key_factors, root, sign, block_size)
    expected = dense_reference(q, k, v, query_factors, key_factors, root, sign)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads_of(actual, inputs), grads_of(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_block_kernel_zero_distances_give_zero_factor_gradients():
    # Identical vectors: every distance is 0, so the bias and the gradient
    # flowing into the factors vanish (the subgradient of a norm at 0).
    grid = TokenGrid(3, 3, num_prefix=1)
    q, k, v, query_factors, key_factors = kernel_inputs(grid)
    same = squared_distance_factors(torch.ones(1, HEADS, grid.num_patches, 3, dtype=q.dtype),
                                    grid.num_prefix)
    query_factors = [same[0].clone().requires_grad_() for _ in range(2)]
    key_factors = [same[1].clone().requires_grad_() for _ in range(2)]
    out = run_kernel(q, k, v, query_factors, key_factors, True, 1., block_size=4)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    grads = grads_of(out, (*query_factors, *key_factors))
    assert all(g.abs().max() == 0 for g in grads)


@pytest.fixture(params=['compiled', 'python'])
def float32_kernel(request, monkeypatch):
    """Which kernel float32 CPU inputs take; 'compiled' is skipped where it cannot be
    built (failed with MMSAPE_REQUIRE_COMPILED_KERNELS=1)."""
    if request.param == 'python':
        monkeypatch.setenv(CPU_KERNEL_ENV, '0')
        return PYTHON_KERNEL
    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    require_cpu_kernel()
    return COMPILED_KERNEL


def test_block_kernel_saves_no_square_tensor(float32_kernel):
    grid = TokenGrid(8, 8, num_prefix=1)
    inputs = kernel_inputs(grid, dtype=torch.float32)
    saved_shapes = []

    def pack(tensor):
        saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run_kernel(*inputs, root=True, sign=1., block_size=16)
    assert kernel_that_ran(out) == float32_kernel
    num_tokens = grid.num_tokens
    # q, k, v, output, logsumexp and the factors: at most one token axis each,
    # O(N) per head.
    assert saved_shapes
    assert all(sum(size == num_tokens for size in shape) <= 1 for shape in saved_shapes)
    assert max(math.prod(shape) for shape in saved_shapes) < HEADS * num_tokens * num_tokens / 4
    out.sum().backward()


# Grids whose token counts cross the compiled kernel's 128 x 256 tiles.
TILE_CROSSING_GRIDS = [TokenGrid(20, 15, num_prefix=1), TokenGrid(16, 16, num_prefix=0),
                       TokenGrid(7, 41, num_prefix=2)]


@pytest.mark.parametrize('grid', TILE_CROSSING_GRIDS,
                         ids=lambda g: f'{g.height}x{g.width}p{g.num_prefix}')
@pytest.mark.parametrize('root,sign', [(True, 1.), (True, -1.), (False, 1.)],
                         ids=['l2', 'l2-negative', 'squared'])
def test_float32_kernels_match_float64_dense_reference(grid, root, sign, float32_kernel):
    inputs64 = kernel_inputs(grid, scale=0.5)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64[:3]]
    inputs32 += [[t.detach().float().requires_grad_() for t in ts] for ts in inputs64[3:]]
    actual = run_kernel(*inputs32, root=root, sign=sign, block_size=64)
    assert kernel_that_ran(actual) == float32_kernel
    expected = dense_reference(*inputs64, root=root, sign=sign)
    torch.testing.assert_close(actual, expected.float(), rtol=1e-4, atol=1e-5)
    flat32 = (*inputs32[:3], *inputs32[3], *inputs32[4])
    flat64 = (*inputs64[:3], *inputs64[3], *inputs64[4])
    weight = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1),
                         dtype=expected.dtype)
    got_grads = torch.autograd.grad((actual * weight.float()).sum(), flat32)
    for got, want in zip(got_grads, torch.autograd.grad((expected * weight).sum(), flat64)):
        # Float32 rounding of the squared distances, relative to their size,
        # reaches the factor gradients through 1 / root: compare to the scale.
        torch.testing.assert_close(got, want.float(), rtol=1e-3,
                                   atol=2e-4 * max(want.abs().max().item(), 1e-3))


def test_compiled_kernel_threads_agree(float32_kernel):
    grid = TokenGrid(12, 9, num_prefix=1)
    inputs = kernel_inputs(grid, dtype=torch.float32)
    single = run_kernel(*inputs, root=True, sign=1., block_size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        multi = run_kernel(*inputs, root=True, sign=1., block_size=32)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(multi, single, rtol=0, atol=0)


def test_compiled_kernel_build_failure_warns_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError('no C++ compiler')

    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    monkeypatch.delenv(REQUIRE_COMPILED_KERNELS_ENV, raising=False)  # CI sets it
    monkeypatch.setattr(sape2_attention_cpu, '_cpu_kernel', None)
    monkeypatch.setattr(sape2_attention_cpu, '_build_failure', '')
    monkeypatch.setattr(cpp_extension, 'load', no_compiler)
    grid = TokenGrid(3, 4, num_prefix=1)
    inputs = kernel_inputs(grid, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match='no C\\+\\+ compiler.*Python kernel runs instead'):
        out = run_kernel(*inputs, root=True, sign=1., block_size=4)
    assert kernel_that_ran(out) == PYTHON_KERNEL
    assert load_cpu_kernel() is None  # tried once, not again on every call


def test_compiled_kernel_build_failure_is_an_error_when_required(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension
    calls = []

    def no_compiler(*args, **kwargs):
        calls.append(args)
        raise RuntimeError('no C++ compiler')

    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    monkeypatch.setenv(REQUIRE_COMPILED_KERNELS_ENV, '1')
    monkeypatch.setattr(sape2_attention_cpu, '_cpu_kernel', None)
    monkeypatch.setattr(sape2_attention_cpu, '_build_failure', '')
    monkeypatch.setattr(cpp_extension, 'load', no_compiler)
    inputs = kernel_inputs(TokenGrid(3, 4, num_prefix=1), dtype=torch.float32)
    for _ in range(2):  # every call, not just the one that tried to build
        with pytest.raises(RuntimeError, match='no C\\+\\+ compiler.*'
                           'MMSAPE_REQUIRE_COMPILED_KERNELS=1 makes this an error'):
            run_kernel(*inputs, root=True, sign=1., block_size=4)
    assert len(calls) == 1
    # Switched off on purpose, the kernel is not required.
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')
    assert kernel_that_ran(run_kernel(*inputs, root=True, sign=1., block_size=4)) == \
        PYTHON_KERNEL


def test_block_kernel_rejects_root_without_floors():
    grid = TokenGrid(2, 2)
    q, k, v, query_factors, key_factors = kernel_inputs(grid)
    with pytest.raises(ValueError, match='floors'):
        sape2_block_attention(q, k, v, query_factors, key_factors, None, root=True)


def test_float32_without_symmetric_factors_takes_python_kernel():
    grid = TokenGrid(3, 4, num_prefix=1)
    q, k, v, query_factors, key_factors = kernel_inputs(grid, dtype=torch.float32)
    floors = torch.cat([rounding_floor(f)[..., 0] for f in key_factors], dim=-1)
    out = sape2_block_attention(q, k, v, query_factors, key_factors, floors, root=True)
    assert kernel_that_ran(out) == PYTHON_KERNEL
