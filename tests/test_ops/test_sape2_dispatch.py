"""Which path computes a SaPE² attention: the decision of ``choose_sape2_kernel``,
row by row, and the path each row then runs.

Every row of :data:`ROWS` is decided with the process's side given as data (a
``KernelEnvironment``), so that the CUDA rows need no GPU, and then run through
``SaPE2.attention`` on the CPU with that decision (the GPU's, for the CUDA rows:
a fake Triton operator that records its arguments and computes with the Python
kernel; FlexAttention eagerly). Each row asserts the chosen path, that the entry
point of that path and no other ran, and that the output (and, without dropout,
every gradient) equals the dense reference: ``softmax(q k^T / sqrt(d) + bias) v``
in float64 with the layer's (B, heads, N, N) bias (with dropout, SDPA on query
blocks of that bias under the same seed, so that the dropout masks agree).

Below the table: the process's side (which probes run, the Triton warning, the
environment switches), what the Triton kernels are handed, forced kernels and
what the user sees of the choice.
"""
import dataclasses
import functools
import math
import types
import warnings
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmsape.models.pos_encodings import SaPE2
from mmsape.models.pos_encodings import base as base_module
from mmsape.models.pos_encodings import sape2 as sape2_module
from mmsape.models.pos_encodings.base import TokenGrid
from mmsape.ops.sape2 import (
    CPU_KERNEL_ENV,
    KERNEL_PATHS,
    TRITON_ENV,
    KernelEnvironment,
    block_attention,
    choose_sape2_kernel,
    dispatch,
    load_cpu_kernel,
    lookup_attention,
    rounding_floor,
    sape2_block_attention,
    squared_distance_factors,
)
from mmsape.ops.sape2.sape2_attention_triton import MAX_HEAD_DIMS as TRITON_MAX_HEAD_DIMS

from builders import kernel_that_ran, require_cpu_kernel

HEADS, HEAD_DIMS, CHUNK = 2, 8, 16
#: 13 tokens fit in one chunk of 16; 21 do not.
SMALL, LARGE = TokenGrid(3, 4, num_prefix=1), TokenGrid(4, 5, num_prefix=1)
CUDA = torch.device('cuda')
NOT_IMPORTABLE = "Triton cannot be imported (ImportError: No module named 'triton')"
OLD_GPU = 'the GPU has compute capability 7.0; the kernels need >= 8.0'
LOOKUP = dict(count_from='query', bias='lookup')

EVERYTHING = KernelEnvironment(cpu_kernel_enabled=True, cpu_kernel_loaded=True,
                               triton_enabled=True, triton_unavailable=None)
CPU_KERNEL_OFF = dataclasses.replace(EVERYTHING, cpu_kernel_enabled=False)
CPU_BUILD_FAILED = dataclasses.replace(EVERYTHING, cpu_kernel_loaded=False)
TRITON_OFF = dataclasses.replace(EVERYTHING, triton_enabled=False)
NO_TRITON = dataclasses.replace(EVERYTHING, triton_unavailable=NOT_IMPORTABLE)
OLD_GPU_ENV = dataclasses.replace(EVERYTHING, triton_unavailable=OLD_GPU)


@dataclasses.dataclass(frozen=True)
class Row:
    """A decision: the device it is made for ('cpu', 'cuda', or None when no
    queries are given), the layer's options and inputs, and the process."""
    device: Optional[str]
    impl: str
    kernel: str
    options: dict = dataclasses.field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    dropout_p: float = 0.
    grid: TokenGrid = SMALL
    environment: KernelEnvironment = EVERYTHING
    head_dims: int = HEAD_DIMS


def row(name: str, device: Optional[str], impl: str, kernel: str, **inputs):
    return pytest.param(Row(device, impl, kernel, **inputs), id=name)


F64, BF16, F16 = torch.float64, torch.bfloat16, torch.float16
ROWS = [
    # --- the published distance bias, impl='auto'
    row('auto-cpu-f32', 'cpu', 'chunked', 'cpu_tiles'),
    row('auto-cpu-f32-large', 'cpu', 'chunked', 'cpu_tiles', grid=LARGE),
    row('auto-cpu-rms', 'cpu', 'chunked', 'cpu_tiles', options=dict(distance='rms')),
    row('auto-cpu-squared', 'cpu', 'chunked', 'cpu_tiles', options=dict(distance='squared')),
    row('auto-cpu-negative', 'cpu', 'chunked', 'cpu_tiles', options=dict(negative_bias=True)),
    row('auto-cpu-bf16', 'cpu', 'chunked', 'cpu_tiles', dtype=BF16),  # vectors in float32
    row('auto-cpu-f64', 'cpu', 'dense', 'dense', dtype=F64),
    row('auto-cpu-f64-large', 'cpu', 'chunked', 'python_blocks', dtype=F64, grid=LARGE),
    row('auto-cpu-f64-squared', 'cpu', 'fused', 'fused_sdpa', dtype=F64,
        options=dict(distance='squared')),
    row('auto-cpu-kernel-off', 'cpu', 'dense', 'dense', environment=CPU_KERNEL_OFF),
    row('auto-cpu-kernel-off-large', 'cpu', 'chunked', 'python_blocks', grid=LARGE,
        environment=CPU_KERNEL_OFF),
    row('auto-cpu-build-failed-large', 'cpu', 'chunked', 'python_blocks', grid=LARGE,
        environment=CPU_BUILD_FAILED),
    row('auto-cpu-build-failed-squared', 'cpu', 'fused', 'fused_sdpa',
        options=dict(distance='squared'), environment=CPU_BUILD_FAILED),
    row('auto-cpu-dropout', 'cpu', 'dense', 'dense', dropout_p=0.2),
    row('auto-cpu-dropout-large', 'cpu', 'chunked', 'checkpointed_sdpa_blocks', dropout_p=0.2,
        grid=LARGE),
    row('auto-cpu-dropout-squared', 'cpu', 'fused', 'fused_sdpa', dropout_p=0.2,
        options=dict(distance='squared')),
    row('auto-cuda-f32', 'cuda', 'chunked', 'triton'),
    row('auto-cuda-bf16-large', 'cuda', 'chunked', 'triton', dtype=BF16, grid=LARGE),
    row('auto-cuda-f16-squared', 'cuda', 'chunked', 'triton', dtype=F16,
        options=dict(distance='squared')),
    row('auto-cuda-rms', 'cuda', 'chunked', 'triton', options=dict(distance='rms')),
    # Heads wider than the Triton kernels take: not 'chunked' expecting Triton.
    row('auto-cuda-wide-heads', 'cuda', 'dense', 'dense', head_dims=264),
    row('auto-cuda-wide-heads-large', 'cuda', 'chunked', 'python_blocks', head_dims=264,
        grid=LARGE),
    row('auto-cuda-wide-heads-squared', 'cuda', 'fused', 'fused_sdpa', head_dims=264,
        options=dict(distance='squared')),
    row('auto-cuda-no-triton', 'cuda', 'dense', 'dense', environment=NO_TRITON),
    row('auto-cuda-no-triton-large', 'cuda', 'chunked', 'python_blocks', grid=LARGE,
        environment=NO_TRITON),
    row('auto-cuda-old-gpu-squared', 'cuda', 'fused', 'fused_sdpa',
        options=dict(distance='squared'), environment=OLD_GPU_ENV),
    row('auto-cuda-triton-off-large', 'cuda', 'chunked', 'python_blocks', grid=LARGE,
        environment=TRITON_OFF),
    row('auto-cuda-f64', 'cuda', 'dense', 'dense', dtype=F64),
    row('auto-cuda-f64-large', 'cuda', 'chunked', 'python_blocks', dtype=F64, grid=LARGE),
    row('auto-cuda-dropout-large', 'cuda', 'chunked', 'checkpointed_sdpa_blocks', dropout_p=0.2,
        grid=LARGE),
    row('auto-cuda-dropout-squared', 'cuda', 'fused', 'fused_sdpa', dropout_p=0.2,
        options=dict(distance='squared')),
    row('auto-no-queries', None, 'dense', 'dense'),
    row('auto-no-queries-large', None, 'chunked', 'python_blocks', grid=LARGE),
    row('auto-no-queries-squared', None, 'fused', 'fused_sdpa', options=dict(distance='squared')),
    # --- the distance bias, impl given
    row('dense-cpu-large', 'cpu', 'dense', 'dense', grid=LARGE, options=dict(impl='dense')),
    row('dense-cuda-dropout', 'cuda', 'dense', 'dense', dropout_p=0.2,
        options=dict(impl='dense')),
    row('chunked-cpu-f32', 'cpu', 'chunked', 'cpu_tiles', options=dict(impl='chunked')),
    row('chunked-cpu-f64', 'cpu', 'chunked', 'python_blocks', dtype=F64,
        options=dict(impl='chunked')),
    row('chunked-cpu-kernel-off', 'cpu', 'chunked', 'python_blocks', options=dict(impl='chunked'),
        environment=CPU_KERNEL_OFF),
    row('chunked-cpu-dropout', 'cpu', 'chunked', 'checkpointed_sdpa_blocks', dropout_p=0.2,
        options=dict(impl='chunked')),
    row('chunked-cuda-f32', 'cuda', 'chunked', 'triton', options=dict(impl='chunked')),
    row('chunked-cuda-no-triton', 'cuda', 'chunked', 'python_blocks',
        options=dict(impl='chunked'), environment=NO_TRITON),
    row('fused-cpu-squared', 'cpu', 'fused', 'fused_sdpa',
        options=dict(impl='fused', distance='squared')),
    row('fused-cuda-squared-dropout', 'cuda', 'fused', 'fused_sdpa', dropout_p=0.2,
        options=dict(impl='fused', distance='squared')),
    # --- the lookup bias of query-relative SaPE², impl='auto'
    row('lookup-auto-cpu-f32', 'cpu', 'chunked', 'cpu_lookup', options=LOOKUP),
    row('lookup-auto-cpu-bf16', 'cpu', 'chunked', 'cpu_lookup', dtype=BF16, options=LOOKUP),
    row('lookup-auto-cpu-head-scalars', 'cpu', 'chunked', 'cpu_lookup',
        options=dict(LOOKUP, table_values='head_scalars')),
    row('lookup-auto-cpu-kernel-off', 'cpu', 'fused', 'fused_sdpa', options=LOOKUP,
        environment=CPU_KERNEL_OFF),
    row('lookup-auto-cpu-f64', 'cpu', 'fused', 'fused_sdpa', dtype=F64, options=LOOKUP),
    row('lookup-auto-cpu-dropout', 'cpu', 'fused', 'fused_sdpa', dropout_p=0.2, options=LOOKUP),
    row('lookup-auto-cuda', 'cuda', 'flex', 'flex', options=LOOKUP),
    row('lookup-auto-cuda-no-triton', 'cuda', 'flex', 'flex', options=LOOKUP,
        environment=NO_TRITON),
    row('lookup-auto-cuda-dropout', 'cuda', 'fused', 'fused_sdpa', dropout_p=0.2,
        options=LOOKUP),
    row('lookup-auto-no-queries', None, 'fused', 'fused_sdpa', options=LOOKUP),
    # --- the lookup bias, impl given
    row('lookup-chunked-cpu-f32', 'cpu', 'chunked', 'cpu_lookup',
        options=dict(LOOKUP, impl='chunked')),
    row('lookup-chunked-cpu-f64', 'cpu', 'chunked', 'python_blocks', dtype=F64,
        options=dict(LOOKUP, impl='chunked')),
    row('lookup-chunked-cpu-build-failed', 'cpu', 'chunked', 'python_blocks',
        options=dict(LOOKUP, impl='chunked'), environment=CPU_BUILD_FAILED),
    row('lookup-chunked-cuda', 'cuda', 'chunked', 'triton', options=dict(LOOKUP, impl='chunked')),
    row('lookup-chunked-cuda-triton-off', 'cuda', 'chunked', 'python_blocks',
        options=dict(LOOKUP, impl='chunked'), environment=TRITON_OFF),
    row('lookup-chunked-dropout', 'cpu', 'chunked', 'checkpointed_sdpa_blocks', dropout_p=0.2,
        options=dict(LOOKUP, impl='chunked')),
    row('lookup-flex-cpu', 'cpu', 'flex', 'flex', options=dict(LOOKUP, impl='flex')),
    row('lookup-flex-dropout-large', 'cpu', 'flex', 'checkpointed_sdpa_blocks', dropout_p=0.2,
        grid=LARGE, options=dict(LOOKUP, impl='flex')),
    row('lookup-fused-cuda', 'cuda', 'fused', 'fused_sdpa', options=dict(LOOKUP, impl='fused')),
]


# ----------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def fresh_triton_warnings(monkeypatch):
    """Every test starts without Triton warnings already reported."""
    monkeypatch.setattr(dispatch, '_reported_triton_failures', set())


def fake_triton_operator(calls: list):
    """Stands in for ``sape2_attention_triton``: records the arguments, computes
    with the Python kernel in float32."""
    python_kernel = block_attention.sape2_attention_python_forward

    def fake_triton(q, k, v, query_factors, key_factors, floors, root, sign=1.):
        calls.append(dict(dtypes=(q.dtype, k.dtype, v.dtype),
                          factor_dtypes={f.dtype for f in (*query_factors, *key_factors)},
                          floors=floors, root=root, sign=sign))
        q, k, v = (t.float().contiguous() for t in (q, k, v))
        out, _ = python_kernel(q, k, v, list(query_factors), list(key_factors),
                               floors if root else None, bool(root), float(sign), 128)
        return out

    return fake_triton


@pytest.fixture
def triton_calls(monkeypatch):
    """Replace the Triton operator by the Python kernel; return its calls' arguments."""
    calls = []
    monkeypatch.setattr(block_attention, 'sape2_attention_triton', fake_triton_operator(calls))
    return calls


#: Each path's entry point, as the code that takes the path calls it.
ENTRY_POINTS = {
    'dense': (base_module, 'attention_with_bias'),
    'cpu_tiles': (block_attention, 'sape2_attention_cpu'),
    'cpu_lookup': (lookup_attention, 'sape2_lookup_attention_cpu_forward'),
    'triton': (block_attention, 'sape2_attention_triton'),
    'python_blocks': (block_attention, 'sape2_attention_python_forward'),
    'checkpointed_sdpa_blocks': (sape2_module, 'checkpointed_block_attention'),
    'fused_sdpa': (sape2_module, 'fused_squared_distance_qk'),
    'flex': (sape2_module, 'flex_lookup_attention'),
}


@pytest.fixture
def paths_run(monkeypatch) -> list:
    """Spy on every path's entry point; returns the paths entered, in order.
    Triton is the fake operator; FlexAttention runs eagerly (CPU)."""
    entered = []
    stand_ins = dict(triton=fake_triton_operator([]),
                     flex=functools.partial(sape2_module.flex_lookup_attention, compile=False))

    def spy(path, function):

        def entry_point(*args, **kwargs):
            entered.append(path)
            return function(*args, **kwargs)

        return entry_point

    assert set(ENTRY_POINTS) == set(KERNEL_PATHS)
    for path, (module, name) in ENTRY_POINTS.items():
        monkeypatch.setattr(module, name, spy(path, stand_ins.get(path, getattr(module, name))))
    return entered


def decide_as(monkeypatch, module, device: Optional[str],
              environment: KernelEnvironment) -> None:
    """Make ``module``'s calls of the dispatcher decide for ``device`` (the
    tensors stay on the CPU) in ``environment``."""
    choose = dispatch.choose_sape2_kernel

    def decide(**request):
        if device != 'cpu':
            request['device'] = device
        return choose(**request, environment=environment)

    monkeypatch.setattr(module, 'choose_sape2_kernel', decide)


# -------------------------------------------------------------- the table
def build_sape(head_dims: int = HEAD_DIMS, **options) -> SaPE2:
    torch.manual_seed(0)
    # A bias of the logits' size (u . e sums head_dims products).
    options.setdefault('table_std', 0.5 * math.sqrt(HEAD_DIMS / head_dims))
    return SaPE2(embed_dims=HEADS * head_dims, num_heads=HEADS, num_layers=1,
                 chunk_size=CHUNK, **options)


def layer_inputs(grid: TokenGrid, head_dims: int, dtype: torch.dtype, requires_grad: bool):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, HEADS, grid.num_tokens, head_dims, generator=generator)
            .to(dtype).requires_grad_(requires_grad) for _ in range(3)]


def dense_reference(sape: SaPE2, q, k, v, grid: TokenGrid, dropout_p: float, block: int):
    """``softmax(q k^T / sqrt(d) + bias) v`` with the layer's dense bias: in
    float64 without dropout, else by SDPA on blocks of ``block`` queries."""
    bias = sape.attention_bias(0, q, k, grid)
    if dropout_p == 0:
        logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
        return (logits + bias.double()).softmax(-1) @ v.double()
    return torch.cat([
        F.scaled_dot_product_attention(q[..., start:start + block, :], k, v,
                                       attn_mask=bias[..., start:start + block, :].to(q.dtype),
                                       dropout_p=dropout_p)
        for start in range(0, grid.num_tokens, block)
    ], dim=-2)


@pytest.mark.filterwarnings('ignore:The fused Triton kernels:RuntimeWarning')
@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
@pytest.mark.parametrize('case', ROWS)
def test_decision_table(case: Row, monkeypatch, paths_run):
    sape = build_sape(case.head_dims, **case.options)
    decide_as(monkeypatch, sape2_module, case.device, case.environment)
    # What the dispatcher itself answers for the layer's request.
    request = dict(bias=sape.bias, impl=sape.impl, distance=sape.distance,
                   device=case.device, dtype=torch.float32 if case.dtype in (BF16, F16) else
                   case.dtype, dropout_p=case.dropout_p, num_tokens=case.grid.num_tokens,
                   chunk_size=CHUNK, head_dims=case.head_dims, environment=case.environment)
    choice = choose_sape2_kernel(**request)
    assert (choice.impl, choice.kernel) == (case.impl, case.kernel), choice.reason
    assert choice.reason

    # The layer decides the same, and runs that path, to the dense result.
    if case.kernel in ('cpu_tiles', 'cpu_lookup'):
        require_cpu_kernel()
    differentiable = case.dropout_p == 0 and case.kernel != 'flex'  # CPU flex: forward only
    q, k, v = layer_inputs(case.grid, case.head_dims, case.dtype, differentiable)
    assert sape.choose_kernel(case.grid, q, case.dropout_p, v) == choice
    assert sape.resolve_impl(case.grid, q, case.dropout_p) == case.impl
    if case.dropout_p > 0:
        block = CHUNK if case.kernel == 'checkpointed_sdpa_blocks' else case.grid.num_tokens
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            torch.manual_seed(1)
            out = sape.attention(0, q, k, v, case.grid, dropout_p=case.dropout_p)
            entered = list(paths_run)
            torch.manual_seed(1)
            expected = dense_reference(sape, q, k, v, case.grid, case.dropout_p, block)
        assert entered == [case.kernel]
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        return
    with torch.set_grad_enabled(differentiable):
        out = sape.attention(0, q, k, v, case.grid)
    assert paths_run == [case.kernel]
    assert sape.last_kernel == choice
    assert out.dtype == case.dtype and out.shape == v.shape
    expected = dense_reference(sape, q, k, v, case.grid, 0., case.grid.num_tokens)
    half = case.dtype in (BF16, F16)
    tolerance = dict(rtol=2e-2, atol=2e-2) if half else (
        dict(rtol=1e-9, atol=1e-10) if case.dtype == F64 else dict(rtol=1e-4, atol=1e-5))
    torch.testing.assert_close(out.double(), expected, **tolerance)
    if not differentiable or half:
        return
    leaves = [q, k, v, sape.position_tables['0']]
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    grads = torch.autograd.grad((out * weight.to(out.dtype)).sum(), leaves)
    expected_grads = torch.autograd.grad((expected * weight).sum(), leaves)
    for got, want in zip(grads, expected_grads):
        scale = want.abs().max().item()
        rtol = 1e-7 if case.dtype == F64 else 1e-3
        torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize('request_, problem', [
    (dict(bias='distance', impl='flex'), "impl='flex' computes only the lookup bias"),
    (dict(bias='distance', impl='fused'), "impl='fused' computes only the squared distance"),
    (dict(bias='distance', impl='fast'), "impl must be one of 'auto'"),
    (dict(bias='relative'), "bias must be one of 'distance', 'lookup'"),
    (dict(bias='distance', distance='l1'), "distance must be one of 'l2'"),
], ids=['flex-distance', 'fused-l2', 'impl', 'bias', 'distance'])
def test_impossible_requests_raise_naming_the_fix(request_, problem):
    with pytest.raises(ValueError, match=problem):
        choose_sape2_kernel(**request_, device='cpu', dtype=torch.float32)


# ---------------------------------------------------- the process's side
@pytest.fixture
def triton_reason(monkeypatch):
    """``set(reason)``: what the process's faked ``triton_unavailable_reason``
    answers (None: the kernels run); ``calls`` lists the devices it was asked about."""
    state = dict(reason=None, calls=[])

    def unavailable_reason(device):
        state['calls'].append(torch.device(device))
        return state['reason']

    monkeypatch.setattr(dispatch, 'triton_unavailable_reason', unavailable_reason)
    monkeypatch.delenv(TRITON_ENV, raising=False)
    state['set'] = lambda reason: state.update(reason=reason)
    return state


def block_kernel(device, dtype, **request) -> str:
    """The kernel ``sape2_block_attention`` runs (symmetric factors) on ``device``."""
    return choose_sape2_kernel(bias='distance', impl='chunked', device=device, dtype=dtype,
                               **request).kernel


def test_cuda_picks_triton_where_it_runs(triton_reason):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert block_kernel(CUDA, torch.float32) == 'triton'
    assert triton_reason['calls'] == [CUDA]


@pytest.mark.parametrize('reason', [NOT_IMPORTABLE, OLD_GPU])
def test_cuda_without_triton_warns_once_and_takes_the_python_kernel(reason, triton_reason):
    triton_reason['set'](reason)
    with pytest.warns(RuntimeWarning) as record:
        for _ in range(3):
            assert block_kernel(CUDA, torch.float32) == 'python_blocks'
    triton_warnings = [str(w.message) for w in record if 'Triton' in str(w.message)]
    assert len(triton_warnings) == 1
    message = triton_warnings[0]
    assert reason in message and 'PyTorch paths' in message
    # Another reason (another GPU) is news: one more warning.
    triton_reason['set'](reason + ' (cuda:1)')
    with pytest.warns(RuntimeWarning, match=r'\(cuda:1\)'):
        assert block_kernel(torch.device('cuda', 1), torch.float32) == 'python_blocks'


def test_environment_variable_skips_triton_without_warning(triton_reason, monkeypatch):
    triton_reason['set'](NOT_IMPORTABLE)
    monkeypatch.setenv(TRITON_ENV, '0')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        choice = choose_sape2_kernel(bias='distance', impl='chunked', device=CUDA,
                                     dtype=torch.float32)
    assert choice.kernel == 'python_blocks' and TRITON_ENV in choice.reason
    assert triton_reason['calls'] == []
    monkeypatch.setenv(TRITON_ENV, '1')
    triton_reason['set'](None)
    assert block_kernel(CUDA, torch.float32) == 'triton'


@pytest.mark.parametrize('request_', [
    dict(dtype=torch.float64),
    dict(dtype=torch.float32, head_dims=264),
    dict(dtype=torch.float32, num_axes=3),
], ids=['float64', 'wide-heads', 'three-axes'])
def test_cuda_requests_triton_cannot_take_never_ask_it(request_, triton_reason):
    triton_reason['set'](NOT_IMPORTABLE)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert block_kernel(CUDA, **request_) == 'python_blocks'
    assert triton_reason['calls'] == []


def test_the_lookup_bias_on_cuda_takes_flex_without_asking_triton(triton_reason):
    triton_reason['set'](NOT_IMPORTABLE)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        choice = choose_sape2_kernel(bias='lookup', device=CUDA, dtype=torch.float32)
    assert choice.kernel == 'flex' and triton_reason['calls'] == []


def test_cpu_never_asks_triton(triton_reason, monkeypatch):
    triton_reason['set'](NOT_IMPORTABLE)
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        choice = choose_sape2_kernel(bias='distance', impl='chunked', device='cpu',
                                     dtype=torch.float32)
    assert choice.kernel == 'python_blocks' and CPU_KERNEL_ENV in choice.reason
    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    expected = 'cpu_tiles' if load_cpu_kernel() is not None else 'python_blocks'
    assert block_kernel(torch.device('cpu'), torch.float32) == expected
    assert block_kernel(torch.device('cpu'), torch.float64) == 'python_blocks'
    assert triton_reason['calls'] == []


def test_the_cpu_kernel_is_built_only_where_a_decision_needs_it(monkeypatch):
    built = []
    monkeypatch.setattr(dispatch, 'load_cpu_kernel', lambda: built.append(1))
    monkeypatch.delenv(CPU_KERNEL_ENV, raising=False)
    for request in (dict(impl='dense'), dict(impl='chunked', dtype=torch.float64),
                    dict(dropout_p=0.1), dict(impl='chunked', device=CUDA, dtype=torch.float64),
                    dict(impl='chunked', symmetric=False)):
        request = dict(dict(device='cpu', dtype=torch.float32), **request)
        choose_sape2_kernel(bias='distance', **request)
    assert built == []
    # Asked: the loader said None (as where the build failed).
    choice = choose_sape2_kernel(bias='distance', device='cpu', dtype=torch.float32)
    assert built == [1] and choice.kernel == 'python_blocks'
    assert 'could not be built' in choice.reason


# ---------------------------------------------------------- module level
def cuda_queries(dtype=torch.bfloat16):
    """What ``resolve_impl`` reads of the queries of a layer on a GPU."""
    return types.SimpleNamespace(device=torch.device('cuda'), dtype=dtype)


def module_sape(**options) -> SaPE2:
    return SaPE2(embed_dims=16, num_heads=2, num_layers=1, chunk_size=64, **options)


#: 17 and 401 tokens, on each side of chunk_size=64.
MODULE_SMALL, MODULE_LARGE = TokenGrid(4, 4, num_prefix=1), TokenGrid(20, 20, num_prefix=1)


@pytest.mark.parametrize('distance', ['l2', 'rms', 'squared'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float32])
def test_auto_takes_the_triton_kernels_where_they_run(distance, dtype, triton_reason):
    sape = module_sape(distance=distance)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for grid in (MODULE_SMALL, MODULE_LARGE):
            assert sape.resolve_impl(grid, cuda_queries(dtype)) == 'chunked'
            assert sape.choose_kernel(grid, cuda_queries(dtype)).kernel == 'triton'


@pytest.mark.parametrize('distance,small,large', [('l2', 'dense', 'chunked'),
                                                  ('squared', 'fused', 'fused')])
def test_auto_with_attention_dropout_keeps_the_former_paths(distance, small, large,
                                                            triton_reason):
    sape = module_sape(distance=distance)
    assert sape.resolve_impl(MODULE_SMALL, cuda_queries(), dropout_p=0.1) == small
    assert sape.resolve_impl(MODULE_LARGE, cuda_queries(), dropout_p=0.1) == large


@pytest.mark.parametrize('distance,small,large', [('l2', 'dense', 'chunked'),
                                                  ('squared', 'fused', 'fused')])
def test_auto_without_triton_warns_once_and_keeps_the_former_paths(distance, small, large,
                                                                   triton_reason):
    triton_reason['set'](NOT_IMPORTABLE)
    sape = module_sape(distance=distance)
    with pytest.warns(RuntimeWarning, match='No module named .triton.') as record:
        for _ in range(3):
            assert sape.resolve_impl(MODULE_SMALL, cuda_queries()) == small
            assert sape.resolve_impl(MODULE_LARGE, cuda_queries()) == large
    assert len([w for w in record if 'Triton' in str(w.message)]) == 1
    # 'chunked' here is the Python kernel, as the choice says.
    if large == 'chunked':
        assert sape.choose_kernel(MODULE_LARGE, cuda_queries()).kernel == 'python_blocks'


def test_auto_float64_on_cuda_keeps_the_former_paths(triton_reason):
    sape = module_sape()
    assert sape.resolve_impl(MODULE_SMALL, cuda_queries(torch.float64)) == 'dense'
    assert sape.resolve_impl(MODULE_LARGE, cuda_queries(torch.float64)) == 'chunked'
    assert triton_reason['calls'] == []


@pytest.mark.parametrize('distance', ['l2', 'squared'])
def test_the_layer_hands_triton_half_q_k_v_and_gets_the_dense_result(distance, monkeypatch,
                                                                     triton_calls):
    # End to end through the module with the GPU's decision: SaPE2 passes the
    # layer's bfloat16 q, k, v uncast and float32 factors; the fake Triton
    # operator computes with the Python kernel, in float32.
    decide_as(monkeypatch, sape2_module, 'cuda', EVERYTHING)
    torch.manual_seed(0)
    sape = module_sape(distance=distance)
    q, k, v = torch.randn(3, 2, 2, MODULE_SMALL.num_tokens, 8).bfloat16()
    out = sape.attention(0, q, k, v, MODULE_SMALL)
    assert [(call['dtypes'][0], call['factor_dtypes'], call['root']) for call in triton_calls] \
        == [(torch.bfloat16, {torch.float32}, distance == 'l2')]
    assert out.dtype == torch.bfloat16
    sape.impl = 'dense'
    expected = sape.attention(0, q.float(), k.float(), v.float(), MODULE_SMALL)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------ ops level
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
    decide_as(monkeypatch, block_attention, 'cuda', EVERYTHING)
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
    decide_as(monkeypatch, block_attention, 'cuda', EVERYTHING)
    q, k, v, query_factors, key_factors, floors = kernel_inputs(TokenGrid(3, 4, 1))
    sape2_block_attention(q, k, v, [torch.cat(query_factors, -1)], [torch.cat(key_factors, -1)],
                          floors, root=False)
    assert triton_calls[0]['floors'] is None and triton_calls[0]['root'] is False


def test_heads_wider_than_the_triton_kernels_take_the_python_kernel(monkeypatch, triton_calls):
    decide_as(monkeypatch, block_attention, 'cuda', EVERYTHING)
    head_dims = TRITON_MAX_HEAD_DIMS + 8
    out = sape2_block_attention(*kernel_inputs(TokenGrid(2, 3, 1), head_dims), root=True)
    assert triton_calls == []
    assert out.grad_fn is None and out.shape[-1] == head_dims


def test_the_lookup_kernel_asks_the_dispatcher(monkeypatch, triton_calls):
    # lookup_block_attention on a GPU without its own kernel: the Triton
    # kernels on the lookup factors (one axis, no floors).
    decide_as(monkeypatch, lookup_attention, 'cuda', EVERYTHING)
    grid = TokenGrid(3, 4, num_prefix=1)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, grid.num_tokens, 8, generator=generator) for _ in range(3))
    x_vectors = torch.randn(1, 2, grid.num_patches, grid.width, generator=generator)
    y_vectors = torch.randn(1, 2, grid.num_patches, grid.height, generator=generator)
    out = lookup_attention.lookup_block_attention(q, k, v, x_vectors, y_vectors, *grid.hw, 1)
    assert [call['root'] for call in triton_calls] == [False]
    expected = lookup_attention.lookup_block_attention(q, k, v, x_vectors, y_vectors, *grid.hw,
                                                       1, kernel='python_blocks')
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="kernel must be one of .*'cpu_lookup'"):
        lookup_attention.lookup_block_attention(q, k, v, x_vectors, y_vectors, *grid.hw, 1,
                                                kernel='cpu_tiles')


def test_forced_kernel():
    inputs = kernel_inputs(TokenGrid(3, 4, 1))
    with pytest.raises(ValueError, match="kernel must be one of .*'python'"):
        sape2_block_attention(*inputs, root=True, kernel='cuda')
    q, k, v, *rest = inputs
    q.requires_grad_()
    out = sape2_block_attention(q, k, v, *rest, root=True, symmetric=True, kernel='python')
    assert kernel_that_ran(out) == 'sape2_attention_python'
    # The path's name forces the same kernel.
    out = sape2_block_attention(q, k, v, *rest, root=True, symmetric=True,
                                kernel='python_blocks')
    assert kernel_that_ran(out) == 'sape2_attention_python'


# ------------------------------------------------------ what the user sees
def test_each_new_choice_is_logged_once_and_the_last_one_shown(monkeypatch):
    logged = []
    monkeypatch.setattr(sape2_module, 'print_log',
                        lambda message, logger=None: logged.append((message, logger)))
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')  # the same choice on every machine
    sape = build_sape()
    assert 'last_kernel' not in sape.extra_repr()
    q, k, v = layer_inputs(LARGE, HEAD_DIMS, torch.float32, requires_grad=False)
    for _ in range(3):
        sape.attention(0, q, k, v, LARGE)
    assert len(logged) == 1
    message, logger = logged[0]
    assert logger == 'current'
    assert message.startswith("SaPE2 attention (impl='auto' -> 'chunked') runs python_blocks (")
    assert f'{CPU_KERNEL_ENV}=0' in message
    assert "impl='auto'" in sape.extra_repr()
    assert sape.extra_repr().endswith("last_kernel='python_blocks'")
    # A new choice is logged; another instance logs its own.
    sape.attention(0, q, k, v, LARGE, dropout_p=0.1)
    assert len(logged) == 2 and 'checkpointed_sdpa_blocks' in logged[1][0]
    assert sape.last_kernel.kernel == 'checkpointed_sdpa_blocks'
    build_sape().attention(0, q, k, v, LARGE)
    assert len(logged) == 3 and logged[2][0] == logged[0][0]


def test_compiling_records_and_logs_nothing(monkeypatch):
    logged = []
    monkeypatch.setattr(sape2_module, 'print_log', lambda *args, **kwargs: logged.append(args))
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')
    sape = build_sape()
    q, k, v = layer_inputs(LARGE, HEAD_DIMS, torch.float32, requires_grad=False)
    torch._dynamo.reset()
    try:
        attend = torch.compile(functools.partial(sape.attention, 0), backend='eager',
                               fullgraph=True)
        out = attend(q, k, v, LARGE)
    finally:
        torch._dynamo.reset()
    assert sape.last_kernel is None and logged == []
    torch.testing.assert_close(out, sape.attention(0, q, k, v, LARGE))
    assert sape.last_kernel.kernel == 'python_blocks' and len(logged) == 1
