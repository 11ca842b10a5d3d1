"""What ``SaPE2(impl='auto')`` runs on a CUDA GPU, with the GPU's conditions faked on CPU.

Where the fused Triton kernels run, the published form (both distances) takes
them (``'chunked'``, dispatched by ``sape2_block_attention``); with attention
dropout, and where they cannot run (no Triton, an older GPU: one warning), it
takes the paths it took before them: ``'dense'`` up to ``chunk_size`` tokens and
the Python block kernel beyond, ``'fused'`` for the squared distance.
"""
import types
import warnings

import pytest
import torch

from mmsape.models.pos_encodings import SaPE2
from mmsape.models.pos_encodings.base import TokenGrid
from mmsape.ops.sape2 import block_attention, sape2_block_attention

SMALL, LARGE = TokenGrid(4, 4, num_prefix=1), TokenGrid(20, 20, num_prefix=1)


def cuda_queries(dtype=torch.bfloat16):
    """What ``resolve_impl`` reads of the queries of a layer on a GPU."""
    return types.SimpleNamespace(device=torch.device('cuda'), dtype=dtype)


def build_sape(**options):
    return SaPE2(embed_dims=16, num_heads=2, num_layers=1, chunk_size=64, **options)


@pytest.fixture
def triton_unavailable(monkeypatch):
    """``set(reason)`` fakes why the Triton kernels cannot run (None: they run)."""
    reason = [None]
    monkeypatch.setattr(block_attention, 'triton_unavailable_reason', lambda device: reason[0])
    monkeypatch.setattr(block_attention, '_reported_triton_failures', set())
    return lambda value: reason.__setitem__(0, value)


@pytest.mark.parametrize('distance', ['l2', 'rms', 'squared'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float32])
def test_auto_takes_the_triton_kernels_where_they_run(distance, dtype, triton_unavailable):
    sape = build_sape(distance=distance)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for grid in (SMALL, LARGE):
            assert sape.resolve_impl(grid, cuda_queries(dtype)) == 'chunked'


@pytest.mark.parametrize('distance,small,large', [('l2', 'dense', 'chunked'),
                                                  ('squared', 'fused', 'fused')])
def test_auto_with_attention_dropout_keeps_the_former_paths(distance, small, large,
                                                            triton_unavailable):
    sape = build_sape(distance=distance)
    assert sape.resolve_impl(SMALL, cuda_queries(), dropout_p=0.1) == small
    assert sape.resolve_impl(LARGE, cuda_queries(), dropout_p=0.1) == large


@pytest.mark.parametrize('distance,small,large', [('l2', 'dense', 'chunked'),
                                                  ('squared', 'fused', 'fused')])
def test_auto_without_triton_warns_once_and_keeps_the_former_paths(distance, small, large,
                                                                   triton_unavailable):
    triton_unavailable("Triton cannot be imported (ImportError: No module named 'triton')")
    sape = build_sape(distance=distance)
    with pytest.warns(RuntimeWarning, match='No module named .triton.') as record:
        for _ in range(3):
            assert sape.resolve_impl(SMALL, cuda_queries()) == small
            assert sape.resolve_impl(LARGE, cuda_queries()) == large
    assert len([w for w in record if 'Triton' in str(w.message)]) == 1


def test_auto_float64_on_cuda_keeps_the_former_paths(triton_unavailable):
    sape = build_sape()
    assert sape.resolve_impl(SMALL, cuda_queries(torch.float64)) == 'dense'
    assert sape.resolve_impl(LARGE, cuda_queries(torch.float64)) == 'chunked'


@pytest.mark.parametrize('distance', ['l2', 'squared'])
def test_the_layer_hands_triton_half_q_k_v_and_gets_the_dense_result(distance, monkeypatch):
    # End to end through the module with the kernel choice faked: SaPE2 passes
    # the layer's bfloat16 q, k, v uncast and float32 factors; the fake Triton
    # operator computes with the Python kernel, in float32.
    received = []

    def fake_triton(q, k, v, query_factors, key_factors, floors, root, sign=1.):
        received.append((q.dtype, {f.dtype for f in (*query_factors, *key_factors)}, root))
        return sape2_block_attention(q.float(), k.float(), v.float(), query_factors,
                                     key_factors, floors, root, sign, kernel='python')

    monkeypatch.setattr(block_attention, 'compiled_kernel_for', lambda device, dtype: 'triton')
    monkeypatch.setattr(block_attention, 'sape2_attention_triton', fake_triton)
    torch.manual_seed(0)
    sape = build_sape(distance=distance)
    q, k, v = torch.randn(3, 2, 2, SMALL.num_tokens, 8).bfloat16()
    out = sape.attention(0, q, k, v, SMALL)
    assert received == [(torch.bfloat16, {torch.float32}, distance == 'l2')]
    assert out.dtype == torch.bfloat16
    sape.impl = 'dense'
    expected = sape.attention(0, q.float(), k.float(), v.float(), SMALL)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
