"""The SaPE² attention kernels as PyTorch custom operators (``torch.ops.mmsape``).

``torch.library.opcheck`` checks each operator's schema, fake (meta)
implementation, autograd registration and tracing by AOT autograd with dynamic
shapes; ``torch.export`` of a SaPE² attention must record one operator, and
``torch.compile`` (AOT autograd and Inductor) must give eager's forward and
backward. The Triton operators have their own tests (``test_sape2_triton.py``).
"""
import pytest
import torch

from mmsape.models.pos_encodings import SaPE2
from mmsape.models.pos_encodings.base import TokenGrid
from mmsape.ops.sape2 import (
    CPU_KERNEL_ENV,
    sape2_attention_cpu_backward,
    sape2_attention_cpu_forward,
    sape2_attention_python_backward,
    sape2_attention_python_forward,
    sape2_lookup_attention_cpu_backward,
    sape2_lookup_attention_cpu_forward,
    squared_distance_factors,
)

from builders import kernel_factors, require_cpu_kernel

pytestmark = pytest.mark.usefixtures('single_thread')

GRID = TokenGrid(3, 5, num_prefix=1)
HEADS, HEAD_DIMS = 2, 8


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def compiled_kernel(monkeypatch):
    monkeypatch.setenv(CPU_KERNEL_ENV, '1')
    require_cpu_kernel()


def operator_args(root: bool, dtype=torch.float32, requires_grad=True, batch=2):
    """Arguments of a forward operator: q, k, v, factors (with a prefix row), floors."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, HEADS, GRID.num_tokens, HEAD_DIMS, generator=generator,
                           dtype=dtype) for _ in range(3))
    factors = [squared_distance_factors(
        torch.randn(batch, HEADS, GRID.num_patches, length, generator=generator, dtype=dtype),
        GRID.num_prefix) for length in (GRID.width, GRID.height)]
    query_factors, key_factors, floors = kernel_factors(
        [f[0] for f in factors], [f[1] for f in factors], root)
    tensors = [t.detach().requires_grad_(requires_grad) for t in (q, k, v)]
    query_factors = [f.detach().requires_grad_(requires_grad) for f in query_factors]
    key_factors = [f.detach().requires_grad_(requires_grad) for f in key_factors]
    return (*tensors, query_factors, key_factors, floors, root, 1.)


def backward_args(forward_op, args, extra=()):
    """Arguments of the backward operator that goes with ``forward_op(*args, *extra)``."""
    q, k, v, query_factors, key_factors, floors, root, sign = args
    detached = [t.detach() for t in (q, k, v)]
    query_factors = [f.detach() for f in query_factors]
    key_factors = [f.detach() for f in key_factors]
    out, lse = forward_op(*detached, query_factors, key_factors, floors, root, sign, *extra)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    return (grad_out, *detached, out, lse, query_factors, key_factors, floors, root, sign,
            *extra)


@pytest.mark.parametrize('root', [True, False], ids=['l2', 'squared'])
def test_compiled_kernel_operators_pass_opcheck(root, compiled_kernel):
    args = operator_args(root)
    torch.library.opcheck(sape2_attention_cpu_forward, args)
    torch.library.opcheck(sape2_attention_cpu_backward,
                          backward_args(sape2_attention_cpu_forward, args))


def test_lookup_kernel_operators_pass_opcheck(compiled_kernel):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, HEADS, GRID.num_tokens, HEAD_DIMS, generator=generator)
               .requires_grad_() for _ in range(3))
    x_vectors, y_vectors = (torch.randn(2, HEADS, GRID.num_patches, length, generator=generator)
                            .requires_grad_() for length in (GRID.width, GRID.height))
    layout = (GRID.height, GRID.width, GRID.num_prefix)
    args = (q, k, v, x_vectors, y_vectors, *layout)
    torch.library.opcheck(sape2_lookup_attention_cpu_forward, args)
    detached = [t.detach() for t in args[:5]]
    out, lse = sape2_lookup_attention_cpu_forward(*detached, *layout)
    grad_out = torch.randn(out.shape, generator=generator)
    torch.library.opcheck(sape2_lookup_attention_cpu_backward,
                          (grad_out, *detached[:3], out, lse, *detached[3:], *layout))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('root', [True, False], ids=['l2', 'squared'])
def test_python_kernel_operators_pass_opcheck(root, dtype):
    args = operator_args(root, dtype)
    block_size = (4, )  # several blocks and a partial one over 16 tokens
    torch.library.opcheck(sape2_attention_python_forward, (*args, *block_size))
    torch.library.opcheck(sape2_attention_python_backward,
                          backward_args(sape2_attention_python_forward, args, block_size))


@pytest.mark.parametrize('forward_op,extra', [
    (sape2_attention_cpu_forward, ()), (sape2_attention_python_forward, (4, ))
], ids=['compiled', 'python'])
def test_operators_agree_with_each_other(forward_op, extra, compiled_kernel):
    # The same attention by either kernel; lse is the row log-sum-exp of the logits.
    args = operator_args(True, requires_grad=False)
    out, lse = forward_op(*args, *extra)
    reference, reference_lse = sape2_attention_python_forward(*args, 16)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, reference_lse, rtol=1e-5, atol=1e-5)
    assert lse.shape == args[0].shape[:-1]


class SaPE2Attention(torch.nn.Module):
    """One SaPE² attention layer on given q, k, v (what a backbone block calls)."""

    def __init__(self, **options) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.sape = SaPE2(embed_dims=HEADS * HEAD_DIMS, num_heads=HEADS, num_layers=1,
                          **options)

    def forward(self, q, k, v):
        return self.sape.attention(0, q, k, v, GRID)


def attention_inputs():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, HEADS, GRID.num_tokens, HEAD_DIMS, generator=generator)
            .requires_grad_() for _ in range(3)]


def mmsape_operators(program: torch.export.ExportedProgram) -> list:
    """The mmsape operators an exported program calls, in its graph and in the
    subgraphs of higher-order ops (SaPE² computes outside autocast)."""
    return [str(node.target) for module in program.graph_module.modules()
            if isinstance(module, torch.fx.GraphModule) for node in module.graph.nodes
            if node.op == 'call_function' and str(node.target).startswith('mmsape.')]


@pytest.mark.parametrize('distance', ['l2', 'squared'])
def test_export_records_one_operator(distance, compiled_kernel):
    module = SaPE2Attention(distance=distance, impl='chunked')
    exported = torch.export.export(module, tuple(t.detach() for t in attention_inputs()))
    assert mmsape_operators(exported) == ['mmsape.sape2_attention_cpu.default']
    # The exported program computes what the module does.
    inputs = [t.detach() for t in attention_inputs()]
    torch.testing.assert_close(exported.module()(*inputs), module(*inputs))


def test_export_records_the_lookup_operator(compiled_kernel):
    module = SaPE2Attention(count_from='query', bias='lookup', impl='chunked')
    exported = torch.export.export(module, tuple(t.detach() for t in attention_inputs()))
    assert mmsape_operators(exported) == ['mmsape.sape2_lookup_attention_cpu.default']


def test_export_records_the_python_kernel_where_it_runs(monkeypatch):
    monkeypatch.setenv(CPU_KERNEL_ENV, '0')
    module = SaPE2Attention(impl='chunked')
    exported = torch.export.export(module, tuple(t.detach() for t in attention_inputs()))
    assert mmsape_operators(exported) == ['mmsape.sape2_attention_python.default']


@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
def test_compiled_attention_matches_eager_forward_and_backward(backend, compiled_kernel):
    module = SaPE2Attention(impl='chunked')
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    results = []
    for run in (module, compiled):
        inputs = attention_inputs()
        out = run(*inputs)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad((out * weight).sum(),
                                    [*inputs, *module.sape.parameters()])
        results.append((out, grads))
    (expected, expected_grads), (actual, actual_grads) = results
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
