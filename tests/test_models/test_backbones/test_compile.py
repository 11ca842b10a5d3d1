"""torch.compile of PosEncViT with every registered position encoding.

Every registered encoding (taken from the registry, so that a new one is covered
as soon as it registers; the example project's ALiBi2D included, as a
third-party encoding) must trace as one graph in eval and in train mode: no
graph break (``torch._dynamo.explain``), and the compiled model
(``fullgraph=True``, through AOT autograd, which traces backward as well) gives
eager's outputs and gradients. The backend is ``aot_eager``: the point is
tracing, not code generation, which would take minutes on CPU.
"""
import pytest
import torch

import projects.alibi2d.alibi2d  # noqa: F401  registers ALiBi2D from outside mmsape
from mmsape.models.pos_encodings import registered_pos_encodings
from mmsape.ops.sape2 import CPU_KERNEL_ENV

from builders import require_cpu_kernel, tiny_vit

#: Encodings that cannot be built from their type alone, and what to build instead.
CONFIGS = {'PositionEncodingStack': [dict(type='LearnedAPE'), dict(type='SaPE2')]}
ENCODINGS = registered_pos_encodings()
# Images of a 4 x 5 patch grid (patch 8): not square, not a power of two.
IMAGE_SHAPE = (2, 3, 32, 40)

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test traces from scratch (no graph cached by an earlier test)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed))


def graph_breaks(model, x: torch.Tensor) -> list:
    """Why ``torch._dynamo`` broke the graph of ``model(x)``; [] when it did not."""
    explanation = torch._dynamo.explain(model)(x)
    reasons = [f'{r.reason.splitlines()[0]} at {r.user_stack[-1] if r.user_stack else "?"}'
               for r in explanation.break_reasons]
    assert len(reasons) == explanation.graph_break_count
    return reasons


def assert_compiled_matches_eager(model, x: torch.Tensor) -> None:
    """Forward (and in train mode backward into every parameter) of the model
    compiled as one graph (``fullgraph=True``: a graph break raises) equal eager's."""
    params = [p for p in model.parameters() if p.requires_grad]
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    results = []
    for run in (model, compiled):
        out = run(x)[0]
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad((out * weight).sum(), params) if model.training else ()
        results.append((out, grads))
    (expected, expected_grads), (actual, actual_grads) = results
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_registry_lists_the_known_encodings():
    # The parametrisation below comes from the registry; a broken registry
    # must not turn it into an empty (vacuously passing) test.
    assert {'SaPE2', 'RoPE2D', 'LearnedAPE', 'PEG', 'ALiBi2D', 'PaPE'} <= set(ENCODINGS)


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('encoding', ENCODINGS)
def test_every_encoding_compiles_without_graph_breaks(encoding, train):
    model = tiny_vit(CONFIGS.get(encoding, dict(type=encoding)), seed=0, train=train)
    with torch.set_grad_enabled(train):
        assert graph_breaks(model, images()) == []


@pytest.mark.parametrize('encoding', ENCODINGS)
def test_every_encoding_compiled_matches_eager_forward_and_backward(encoding):
    model = tiny_vit(CONFIGS.get(encoding, dict(type=encoding)), seed=0, train=True)
    assert_compiled_matches_eager(model, images())


@pytest.mark.parametrize('options', [
    dict(impl='dense'),
    dict(impl='chunked', negative_bias=True),
    dict(impl='chunked', distance='squared'),
    dict(impl='fused', distance='squared'),
    dict(impl='auto', distance='rms', layers=[1]),
    dict(count_from='query'),
    dict(count_from='query', bias='lookup'),
    dict(count_from='query', bias='lookup', impl='fused'),
], ids=lambda options: '-'.join(f'{k}={v}' for k, v in options.items()))
def test_sape2_paths_compile_without_graph_breaks(options):
    # fullgraph=True: a graph break would raise.
    assert_compiled_matches_eager(tiny_vit(dict(type='SaPE2', **options), seed=0, train=True),
                                  images())


@pytest.mark.parametrize('kernel', ['compiled', 'python'])
def test_sape2_kernels_compile_without_graph_breaks(kernel, monkeypatch):
    monkeypatch.setenv(CPU_KERNEL_ENV, '1' if kernel == 'compiled' else '0')
    if kernel == 'compiled':
        require_cpu_kernel()
    assert_compiled_matches_eager(tiny_vit('SaPE2', seed=0, train=True), images())


def test_sape2_with_vitdet_windows_compiles_without_graph_breaks():
    # Windows padded at the border (4 x 5 grid in 3 x 3 windows) and one global block.
    model = tiny_vit('SaPE2', seed=0, train=True, with_cls_token=False, out_type='featmap',
                     window_size=3, global_attn_indexes=(1, ))
    assert_compiled_matches_eager(model, images())


def test_sape2_attention_dropout_compiles_without_graph_breaks():
    # Attention dropout takes the checkpointed path (SDPA per query block).
    model = tiny_vit('SaPE2', seed=0, train=True, attn_drop_rate=0.1)
    out = torch.compile(model, backend='aot_eager', fullgraph=True)(images())[0]
    out.sum().backward()
    assert all(p.grad is not None for p in model.pos_encoding.parameters())


@pytest.mark.parametrize('options', [
    dict(rotation_invariant=True),
    dict(prefix_position='none', coords='normalized', impl='dense', layers=[1]),
    dict(window_size=3, global_attn_indexes=(1, ), with_cls_token=False, out_type='featmap'),
], ids=['ri', 'none-normalized-dense', 'windows'])
def test_pape_paths_compile_without_graph_breaks(options):
    # Windows padded at the border (4 x 5 grid in 3 x 3 windows): the padding mask.
    backbone = {k: options.pop(k) for k in list(options)
                if k in ('window_size', 'global_attn_indexes', 'with_cls_token', 'out_type')}
    options.setdefault('parabolas', None if options.get('rotation_invariant') else 4)
    model = tiny_vit(dict(type='PaPE', **options), seed=0, train=True, **backbone)
    assert graph_breaks(model, images()) == []
    assert_compiled_matches_eager(model, images())


def test_input_checks_raise_compiled_and_eager():
    model = tiny_vit('SaPE2', seed=0)
    bad = images()
    bad[0, 0, 3, 4] = float('nan')
    message = 'Input images contain NaN or Inf values'
    with pytest.raises(ValueError, match=message):
        model(bad)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    compiled(images())  # a good batch passes
    # Compiled, the check is an assertion inside the graph.
    with pytest.raises(RuntimeError, match=message):
        compiled(bad)
    # Shape checks run while tracing; they raise the eager errors where the
    # graph may break (a full graph stops with dynamo's error quoting them).
    with pytest.raises(ValueError, match='expects images of shape'):
        torch.compile(model, backend='aot_eager')(images()[0])
