"""Which kernel ``sape2_block_attention`` runs, with the CUDA conditions faked on CPU.

The Triton kernels' availability (``triton_unavailable_reason``) is replaced by
a stub, and so is the Triton operator itself (by one that records its
arguments and computes with the Python kernel): the dispatch is tested here,
the kernels in ``test_sape2_triton.py``.
"""
import warnings

import pytest
import torch

from mmsape.models.pos_encodings.base import TokenGrid
from mmsape.ops.sape2 import (
    CPU_KERNEL_ENV,
    TRITON_ENV,
    block_attention,
    compiled_kernel_for,
    load_cpu_kernel,
    rounding_floor,
    sape2_block_attention,
    squared_distance_factors,
)

from builders import kernel_that_ran

CUDA = torch.device('cuda')
NOT_IMPORTABLE = "Triton cannot be imported (ImportError: No module named 'triton')"
OLD_GPU = 'the GPU has compute capability 7.0; the kernels need >= 8.0'


@pytest.fixture
def triton_reason(monkeypatch):
    """``set(reason)``: what the faked ``triton_unavailable_reason`` answers (None:
    the kernels run); ``calls`` lists the devices it was asked about."""
    state = dict(reason=None, calls=[])

    def unavailable_reason(device):
        state['calls'].append(torch.device(device))
        return state['reason']

    monkeypatch.setattr(block_attention, 'triton_unavailable_reason', unavailable_reason)
    monkeypatch.setattr(block_attention, '_reported_triton_failures', set())
    state['set'] = lambda reason: state.update(reason=reason)
    return state


@pytest.fixture
def triton_calls(monkeypatch):
    """Replace the Triton operator by the Python kernel; return its calls' arguments."""
    calls = []

    def fake_triton(q, k, v, query_factors, key_factors, floors, root, sign=1.):
        calls.append(dict(dtypes=(q.dtype, k.dtype, v.dtype),
                          factor_dtypes={f.dtype for f in (*query_factors, *key_factors)},
                          floors=floors, root=root, sign=sign))
        return sape2_block_attention(q.float(), k.float(), v.float(), query_factors,
                                     key_factors, floors, root, sign, kernel='python')

    monkeypatch.setattr(block_attention, 'sape2_attention_triton', fake_triton)
    return calls


def test_cuda_picks_triton_where_it_runs(triton_reason):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert compiled_kernel_for(CUDA, torch.float32) == 'triton'
    assert triton_reason['calls'] == [CUDA]


@pytest.mark.parametrize('reason', [NOT_IMPORTABLE, OLD_GPU])
def test_cuda_without_triton_warns_once_and_takes_the_python_kernel(reason, triton_reason):
    triton_reason['set'](reason)
    with pytest.warns(RuntimeWarning) as record:
        for _ in range(3):
            assert compiled_kernel_for(CUDA, torch.float32) is None
    triton_warnings = [str(w.message) for w in record if 'Triton' in str(w.message)]
    assert len(triton_warnings) == 1
    message = triton_warnings[0]
    assert reason in message and 'PyTorch paths' in message
    # Another reason (another GPU) is news: one more warning.
    triton_reason['set'](reason + ' (cuda:1)')
    with pytest.warns(RuntimeWarning, match=r'\(cuda:1\)'):
        assert compiled_kernel_for(torch.device('cuda', 1), torch.float32) is None


def test_environment_variable_skips_triton_without_warning(triton_reason, monkeypatch):
    triton_reason['set'](NOT_IMPORTABLE)
    monkeypatch.setenv(TRITON_ENV, '0')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert compiled_kernel_for(CUDA, torch.float32) is None
    monkeypatch.setenv(TRITON_ENV, '1')
    triton_reason['set'](None)
    assert compiled_kernel_for(CUDA, torch.float32) == 'triton'


def test_cuda_float64_takes_the_python_kernel_without_asking_triton(triton_reason):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert compiled_kernel_for(CUDA, torch.float64) is None
    assert triton_reason['calls'] == []


def test_cpu_never_asks_triton(triton_reason, monkeypatch):
    triton_reason['set'](NOT_IMPORTABLE)
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert compiled_kernel_for(torch.device('cpu'), torch.float32) is None
    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    expected = 'cpu' if load_cpu_kernel() is not None else None
    assert compiled_kernel_for(torch.device('cpu'), torch.float32) == expected
    assert compiled_kernel_for(torch.device('cpu'), torch.float64) is None
    assert triton_reason['calls'] == []


def kernel_inputs(grid, head_dims=8, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, grid.num_tokens, head_dims, generator=generator).to(dtype)
               for _ in range(3))
    factors = [squared_distance_factors(torch.randn(1, 2, grid.num_patches, length,
                                                    generator=generator), grid.num_prefix)
               for length in (grid.width, grid.height)]
    query_factors, key_factors = [f[0] for f in factors], [f[1] for f in factors]
    floors = torch.cat([rounding_floor(f)[..., 0] for f in key_factors], dim=-1)
    return q, k, v, query_factors, key_factors, floors


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('symmetric', [True, False])
def test_triton_gets_q_k_v_in_their_dtype_and_float32_factors(dtype, symmetric, monkeypatch,
                                                              triton_calls):
    monkeypatch.setattr(block_attention, 'compiled_kernel_for', lambda device, dtype: 'triton')
    q, k, v, query_factors, key_factors, floors = kernel_inputs(TokenGrid(3, 4, 1), dtype=dtype)
    out = sape2_block_attention(q, k, v, query_factors, key_factors, floors, root=True,
                                sign=-1., symmetric=symmetric)
    assert triton_calls == [dict(dtypes=(dtype, ) * 3, factor_dtypes={torch.float32},
                                 floors=floors, root=True, sign=-1.)]
    assert out.dtype == dtype
    expected = sape2_block_attention(q, k, v, query_factors, key_factors, floors, root=True,
                                     sign=-1., kernel='python')
    torch.testing.assert_close(out, expected)


def test_triton_gets_no_floors_for_squared_distances(monkeypatch, triton_calls):
    monkeypatch.setattr(block_attention, 'compiled_kernel_for', lambda device, dtype: 'triton')
    q, k, v, query_factors, key_factors, floors = kernel_inputs(TokenGrid(3, 4, 1))
    sape2_block_attention(q, k, v, [torch.cat(query_factors, -1)], [torch.cat(key_factors, -1)],
                          floors, root=False)
    assert triton_calls[0]['floors'] is None and triton_calls[0]['root'] is False


def test_heads_wider_than_the_triton_kernels_take_the_python_kernel(monkeypatch, triton_calls):
    monkeypatch.setattr(block_attention, 'compiled_kernel_for', lambda device, dtype: 'triton')
    head_dims = block_attention.TRITON_MAX_HEAD_DIMS + 8
    out = sape2_block_attention(*kernel_inputs(TokenGrid(2, 3, 1), head_dims), root=True)
    assert triton_calls == []
    assert out.grad_fn is None and out.shape[-1] == head_dims


def test_forced_kernel(monkeypatch):
    inputs = kernel_inputs(TokenGrid(3, 4, 1))
    with pytest.raises(ValueError, match="kernel must be one of .*'python'"):
        sape2_block_attention(*inputs, root=True, kernel='cuda')
    q, k, v, *rest = inputs
    q.requires_grad_()
    out = sape2_block_attention(q, k, v, *rest, root=True, symmetric=True, kernel='python')
    assert kernel_that_ran(out) == 'sape2_attention_python'
