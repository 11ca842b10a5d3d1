"""The fused Triton kernels of exact SaPE² attention against a float64 dense reference.

On the CPU the kernels run through Triton's interpreter, which a process turns on
by setting ``TRITON_INTERPRET=1`` before it imports Triton; it then interprets
every Triton kernel of the process. So that the other tests of a session keep
compiled Triton (GPU jobs), ``test_kernels_in_interpreter_process`` runs this
file in a child process with the variable set, and the kernel tests run there;
in the parent they are skipped, naming that test. To run them directly::

    TRITON_INTERPRET=1 pytest tests/test_ops/test_sape2_triton.py

The reference is written from the equations: per axis ``sq = qf kf^T``, the
bias sums ``sqrt(sq)`` where ``sq > floor`` (else 0, with gradient 0) or ``sq``
itself, logits ``q k^T / sqrt(d) + sign * bias``, softmax, ``P v``; gradients by
autograd in float64.
"""
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

import pytest
import torch

from mmsape.ops.sape2 import compiled_kernels_required
from mmsape.ops.sape2.sape2_attention_triton import (
    MAX_HEAD_DIMS,
    sape2_attention_triton,
    triton_available,
    triton_unavailable_reason,
)

try:
    import triton  # noqa: F401
    TRITON_IMPORT_ERROR = None
except Exception as error:  # ImportError, or a broken install's OSError
    TRITON_IMPORT_ERROR = f'{type(error).__name__}: {error}'

INTERPRETED = TRITON_IMPORT_ERROR is None and triton_available('cpu')
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED,
    reason=(f'Triton is not importable ({TRITON_IMPORT_ERROR})' if TRITON_IMPORT_ERROR else
            'runs in the interpreter child process of test_kernels_in_interpreter_process'))
#: Tests of this file that the child process skips: the runner itself, the
#: check that CPU tensors need the interpreter, the two GPU compilations and
#: the six CUDA comparisons.
CHILD_SKIPS = 10
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------ inputs
@dataclass
class Case:
    """One attention problem: a patch grid, prefix tokens and the kernel options."""
    height: int
    width: int
    num_prefix: int
    root: bool
    sign: float
    head_dims: int = 32
    batch: int = 1
    heads: int = 2

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.height * self.width


def sape_like_vectors(case: Case, length: int, generator: torch.Generator) -> torch.Tensor:
    """``(B, H, H*W, length)`` float32 vectors like SaPE's: centred over the patch
    tokens, with some tokens repeated (identical tokens get identical vectors, at
    distance 0, where the root has no derivative)."""
    shape = (case.batch, case.heads, case.height * case.width, length)
    vectors = torch.randn(shape, generator=generator) * 0.5
    vectors[..., 1::5, :] = vectors[..., :1, :]
    return vectors - vectors.mean(dim=-2, keepdim=True)


def distance_factors(vectors: torch.Tensor, num_prefix: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``[-2 s, |s|^2, 1]`` and ``[s, 1, |s|^2]`` with all-zero prefix rows, as
    ``squared_distance_factors`` builds them."""
    norms = vectors.pow(2).sum(-1, keepdim=True)
    ones = torch.ones_like(norms)
    query = torch.cat([-2 * vectors, norms, ones], dim=-1)
    key = torch.cat([vectors, ones, norms], dim=-1)
    pad = torch.nn.functional.pad
    return pad(query, (0, 0, num_prefix, 0)), pad(key, (0, 0, num_prefix, 0))


def rounding_floor(key_factor: torch.Tensor) -> torch.Tensor:
    """``(B, H)`` floor of the matmul form's float32 rounding, as ``rounding_floor``:
    ``4 sqrt(L + 2) eps max |s_n|^2``."""
    width = key_factor.shape[-1]
    return key_factor[..., -1].amax(-1) * (4 * math.sqrt(width) * torch.finfo(torch.float32).eps)


def make_inputs(case: Case, dtype=torch.float32, seed: int = 0):
    """q, k, v in ``dtype``; per-axis float32 factors (x: width W + 2, y: H + 2; one
    concatenated axis for squared distances) and their floors."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(case.batch, case.heads, case.num_tokens, case.head_dims,
                           generator=generator).to(dtype) for _ in range(3))
    factors = [distance_factors(sape_like_vectors(case, length, generator), case.num_prefix)
               for length in (case.width, case.height)]
    query_factors, key_factors = [f[0] for f in factors], [f[1] for f in factors]
    if not case.root:
        query_factors = [torch.cat(query_factors, dim=-1)]
        key_factors = [torch.cat(key_factors, dim=-1)]
    floors = torch.stack([rounding_floor(f) for f in key_factors], dim=-1)
    return q, k, v, query_factors, key_factors, floors


def dense_reference(q, k, v, query_factors, key_factors, floors: Optional[torch.Tensor],
                    root: bool, sign: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Output and row log-sum-exp, materialising the N x N bias."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    for axis, (query_factor, key_factor) in enumerate(zip(query_factors, key_factors)):
        squared = query_factor @ key_factor.transpose(-1, -2)
        if root:
            kept = squared > floors[..., axis, None, None]
            # The inner where keeps the root's gradient out of the dropped entries.
            squared = torch.where(kept, torch.where(kept, squared, 1.).sqrt(), 0.)
        logits = logits + sign * squared
    return torch.softmax(logits, dim=-1) @ v, logits.logsumexp(dim=-1)


def leaves(tensors, dtype=None, device=None) -> List[torch.Tensor]:
    return [t.detach().to(device=device or t.device, dtype=dtype or t.dtype).requires_grad_()
            for t in tensors]


def kernel_and_reference(case: Case, dtype=torch.float32, seed: int = 0, device='cpu'):
    """Outputs, gradients (q, k, v, every query factor, every key factor) and
    inputs of the kernel and of the float64 reference, for one random cotangent."""
    q, k, v, query_factors, key_factors, floors = make_inputs(case, dtype, seed)
    floors = floors.to(device)
    num_axes = len(query_factors)
    inputs = leaves([q, k, v, *query_factors, *key_factors], device=device)
    inputs64 = leaves(inputs, torch.float64)
    floors_arg = floors if case.root else None
    out = sape2_attention_triton(*inputs[:3], inputs[3:3 + num_axes], inputs[3 + num_axes:],
                                 floors_arg, case.root, case.sign)
    expected, _ = dense_reference(*inputs64[:3], inputs64[3:3 + num_axes],
                                  inputs64[3 + num_axes:], floors.double(), case.root,
                                  case.sign)
    # Rounded to the output's dtype, so that both sides see the same one.
    cotangent = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed + 1),
                            dtype=torch.float64).to(out.dtype).double().to(device)
    grads = torch.autograd.grad(out, inputs, cotangent.to(out.dtype))
    expected_grads = torch.autograd.grad(expected, inputs64, cotangent)
    return out, expected, grads, expected_grads, inputs


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float,
                          scale_tol: float, name: str) -> None:
    """Elementwise ``rtol`` plus ``scale_tol`` times the largest reference value."""
    torch.testing.assert_close(actual.double(), expected, rtol=rtol,
                               atol=scale_tol * max(expected.abs().max().item(), 1e-6),
                               msg=lambda message: f'{name}: {message}')


GRAD_NAMES = ('q', 'k', 'v')


def gradient_names(num_axes: int) -> Tuple[str, ...]:
    """Names of the gradients :func:`kernel_and_reference` returns, in order."""
    return (*GRAD_NAMES, *(f'query factor {a}' for a in range(num_axes)),
            *(f'key factor {a}' for a in range(num_axes)))

CASES = {
    # 3 x 18 grid: the x factors (width 20) take two chunks of the distance loop
    # and the main + tail blocks of the gradients; 55 tokens: 4 tiles with a tail.
    'l2-nonsquare': Case(3, 18, num_prefix=1, root=True, sign=1.),
    # Negative sign, head dim 48 (padded to 64), two prefix tokens, batch 2.
    'l2-square-negative-d48': Case(5, 5, num_prefix=2, root=True, sign=-1., head_dims=48,
                                   batch=2, heads=1),
    # Squared distances: one concatenated axis of width 8 + 6.
    'squared': Case(4, 6, num_prefix=1, root=False, sign=1.),
    'squared-negative': Case(6, 3, num_prefix=0, root=False, sign=-1.),
}


# ------------------------------------------------------------------ kernels
@needs_interpreter
@pytest.mark.parametrize('case', list(CASES.values()), ids=list(CASES))
def test_float32_matches_float64_reference_with_every_gradient(case):
    out, expected, grads, expected_grads, inputs = kernel_and_reference(case)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    for name, got, want in zip(gradient_names((len(inputs) - 3) // 2), grads, expected_grads):
        # The factors' gradients go through 0.5 / root: float32 rounding of a
        # squared distance, relative to its size, is amplified where the root
        # is small; compared to the largest entry they agree to ~1e-6.
        assert_close_to_scale(got, want, rtol=1e-4, scale_tol=1e-5, name=name)


@needs_interpreter
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_half_inputs_match_float64_reference(dtype):
    case = Case(4, 5, num_prefix=1, root=True, sign=1.)
    out, expected, grads, expected_grads, _ = kernel_and_reference(case, dtype)
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in grads[:3])
    assert all(g.dtype == torch.float32 for g in grads[3:])
    # The reference sees the same half-rounded q, k, v. What differs: the kernel
    # rounds P to the half dtype for P v and dS for dS k / dS^T q (as every
    # flash kernel does), and its outputs. Unit roundoff u = 2^-8 (bf16),
    # 2^-11 (fp16); errors of a few u relative to the largest value.
    unit = 2.**-8 if dtype == torch.bfloat16 else 2.**-11
    assert_half_close(out, expected, grads, expected_grads, unit)


def assert_half_close(out, expected, grads, expected_grads, unit: float) -> None:
    """Half-precision results: output and q/k/v gradients within a few unit
    roundoffs of the scale; the float32 factor gradients as in float32 (they see
    dS in float32, and delta from the float32 output)."""
    assert_close_to_scale(out, expected, rtol=4 * unit, scale_tol=4 * unit, name='out')
    names = gradient_names((len(grads) - 3) // 2)
    for name, got, want in zip(names[:3], grads[:3], expected_grads[:3]):
        assert_close_to_scale(got, want, rtol=8 * unit, scale_tol=8 * unit, name=name)
    for name, got, want in zip(names[3:], grads[3:], expected_grads[3:]):
        assert_close_to_scale(got, want, rtol=1e-3, scale_tol=1e-4, name=name)


@needs_interpreter
def test_lse_output_and_its_gradient():
    case = Case(3, 4, num_prefix=1, root=True, sign=-1.)
    q, k, v, query_factors, key_factors, floors = make_inputs(case)
    inputs = leaves([q, k, v, *query_factors, *key_factors])
    inputs64 = leaves(inputs, torch.float64)
    out, lse = torch.ops.mmsape.sape2_attention_triton(
        *inputs[:3], inputs[3:5], inputs[5:], floors, True, -1.)
    expected, expected_lse = dense_reference(*inputs64[:3], inputs64[3:5], inputs64[5:],
                                             floors.double(), True, -1.)
    assert lse.dtype == torch.float32 and lse.shape == expected_lse.shape
    torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-6, atol=1e-6)
    # d lse / d logits = P joins dO's contribution in the softmax backward.
    weights = torch.randn(expected_lse.shape, generator=torch.Generator().manual_seed(3),
                          dtype=torch.float64)
    grads = torch.autograd.grad(out.sum() + (lse * weights.float()).sum(), inputs)
    expected_grads = torch.autograd.grad(expected.sum() + (expected_lse * weights).sum(),
                                         inputs64)
    for got, want in zip(grads, expected_grads):
        assert_close_to_scale(got, want, rtol=1e-4, scale_tol=1e-5, name='lse gradient')


@needs_interpreter
def test_zero_distances_give_zero_bias_and_zero_factor_gradients():
    # Identical vectors: every squared distance is rounding noise at or below
    # the floor, so the bias vanishes (plain attention) and so does the gradient
    # reaching the factors (a norm's subgradient at 0).
    case = Case(3, 3, num_prefix=1, root=True, sign=1.)
    q, k, v, _, _, _ = make_inputs(case)
    same = torch.full((1, case.heads, 9, 3), 0.7)
    query_factor, key_factor = distance_factors(same, case.num_prefix)
    factors = leaves([query_factor, key_factor, query_factor, key_factor])
    floors = torch.stack([rounding_floor(key_factor)] * 2, dim=-1)
    out = sape2_attention_triton(q, k, v, factors[::2], factors[1::2], floors, True)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v),
                               rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.sum(), factors)
    assert all(g.abs().max() == 0 for g in grads)


@needs_interpreter
def test_gradients_reach_sape_vectors_like_explicit_distances():
    # End to end through the factors' construction, where the matmul form's
    # norms and cross terms cancel: against distances of explicit differences.
    case = Case(4, 4, num_prefix=1, root=True, sign=1.)
    generator = torch.Generator().manual_seed(5)
    q, k, v = leaves(torch.randn(3, 1, 2, case.num_tokens, 32, generator=generator))
    vectors = leaves([sape_like_vectors(case, length, generator) for length in (4, 4)])
    factors = [distance_factors(s, case.num_prefix) for s in vectors]
    floors = torch.stack([rounding_floor(f[1]).detach() for f in factors], dim=-1)
    out = sape2_attention_triton(q, k, v, [f[0] for f in factors], [f[1] for f in factors],
                                 floors, True)

    inputs64 = leaves([q, k, v, *vectors], torch.float64)
    logits = inputs64[0] @ inputs64[1].transpose(-1, -2) / math.sqrt(32)
    for s in inputs64[3:]:
        difference = s[..., :, None, :] - s[..., None, :, :]
        squared = difference.pow(2).sum(-1)
        kept = squared > 0
        distance = torch.where(kept, torch.where(kept, squared, 1.).sqrt(), 0.)
        logits = logits + torch.nn.functional.pad(distance, (1, 0, 1, 0))
    expected = torch.softmax(logits, dim=-1) @ inputs64[2]
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    cotangent = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad(out, [q, k, v, *vectors], cotangent.float())
    expected_grads = torch.autograd.grad(expected, inputs64, cotangent)
    for name, got, want in zip((*GRAD_NAMES, 'x vectors', 'y vectors'), grads, expected_grads):
        assert_close_to_scale(got, want, rtol=1e-3, scale_tol=1e-4, name=name)


@needs_interpreter
def test_saves_no_square_tensor_for_backward():
    case = Case(6, 6, num_prefix=1, root=True, sign=1.)
    q, k, v, query_factors, key_factors, floors = make_inputs(case)
    inputs = leaves([q, k, v])
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = sape2_attention_triton(*inputs, query_factors, key_factors, floors, True)
    # q, k, v, output, lse, floors and factors: at most one token axis each.
    assert saved and all(sum(size == case.num_tokens for size in shape) <= 1 for shape in saved)
    out.sum().backward()


@needs_interpreter
def test_custom_ops_pass_opcheck():
    case = Case(3, 5, num_prefix=1, root=True, sign=-1., heads=1)
    q, k, v, query_factors, key_factors, floors = make_inputs(case)
    # v as a view of a (d, N) tensor: the outputs are contiguous whatever the inputs.
    v = v.transpose(-1, -2).contiguous().transpose(-1, -2)
    q, k, v, *factors = leaves([q, k, v, *query_factors, *key_factors])
    assert not v.is_contiguous()
    args = (q, k, v, factors[:2], factors[2:], floors, True, -1.)
    torch.library.opcheck(torch.ops.mmsape.sape2_attention_triton.default, args)
    out, lse = torch.ops.mmsape.sape2_attention_triton(*args)
    backward_args = (torch.randn_like(out), None, q.detach(), k.detach(), v.detach(),
                     out.detach(), lse.detach(), [f.detach() for f in factors[:2]],
                     [f.detach() for f in factors[2:]], floors, True, -1.)
    torch.library.opcheck(torch.ops.mmsape.sape2_attention_triton_backward.default,
                          backward_args)


@needs_interpreter
def test_compiles_without_graph_breaks_and_exports_as_one_op():
    case = Case(3, 4, num_prefix=1, root=False, sign=1., heads=1)
    q, k, v, query_factors, key_factors, _ = make_inputs(case)

    def attend(q, k, v, query_factor, key_factor):
        return sape2_attention_triton(q, k, v, [query_factor], [key_factor], None, False) * 2

    eager_inputs = leaves([q, k, v, *query_factors, *key_factors])
    compiled_inputs = leaves(eager_inputs)
    expected = attend(*eager_inputs)
    expected.sum().backward()
    compiled = torch.compile(attend, backend='aot_eager', fullgraph=True)
    actual = compiled(*compiled_inputs)
    actual.sum().backward()
    torch.testing.assert_close(actual, expected)
    for got, want in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(got.grad, want.grad)

    class Attention(torch.nn.Module):

        def forward(self, *inputs):
            return attend(*inputs)

    exported = torch.export.export(Attention(), tuple(t.detach() for t in eager_inputs))
    targets = [node.target for node in exported.graph.nodes if node.op == 'call_function']
    assert targets.count(torch.ops.mmsape.sape2_attention_triton.default) == 1
    torch.testing.assert_close(exported.module()(*eager_inputs), expected)


@needs_interpreter
def test_autotuned_launches_match_reference(monkeypatch):
    # On a GPU every kernel is autotuned: each candidate tile configuration
    # runs on the real buffers first, and the backward kernels add into the
    # factors' gradients. Here the same autotuner runs under the interpreter
    # (timing with a wall clock), so these results went through it.
    import importlib
    import time

    from mmsape.ops.sape2 import sape2_attention_triton as module

    def wall_clock(function, quantiles):
        start = time.perf_counter()
        function()
        return [time.perf_counter() - start] * len(quantiles)

    kernels = importlib.import_module('mmsape.ops.sape2.sape2_triton_kernels')
    launchers = module._Launchers(kernels, interpreted=True, do_bench=wall_clock)
    monkeypatch.setattr(module, '_launchers', lambda: launchers)
    case = Case(3, 6, num_prefix=1, root=True, sign=-1., heads=1)
    out, expected, grads, expected_grads, _ = kernel_and_reference(case)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        assert_close_to_scale(got, want, rtol=1e-4, scale_tol=1e-5, name='gradient')
    tuned = (launchers.forward, launchers.backward_query, launchers.backward_key)
    assert all(len(kernel.configs) > 1 and kernel.cache for kernel in tuned)


def _cuda_unavailable_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        return 'needs a CUDA GPU'
    if INTERPRETED:
        return 'Triton interprets every kernel in this process'
    return triton_unavailable_reason('cuda')


@pytest.mark.skipif(_cuda_unavailable_reason() is not None,
                    reason=str(_cuda_unavailable_reason()))
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('side,root', [(32, True), (32, False), (64, True)],
                         ids=['1024-tokens-l2', '1024-tokens-squared', '4096-tokens-l2'])
def test_cuda_matches_float64_reference(side, root, dtype):
    # The compiled kernels at detection-like sizes: a 32 x 32 or 64 x 64 grid
    # and a class token, head dim 64, factor widths 34 / 66.
    case = Case(side, side, num_prefix=1, root=root, sign=1., head_dims=64)
    out, expected, grads, expected_grads, inputs = kernel_and_reference(case, dtype,
                                                                        device='cuda')
    assert out.is_cuda and out.dtype == dtype
    if dtype == torch.bfloat16:
        assert_half_close(out, expected, grads, expected_grads, unit=2.**-8)
        return
    # Sums over thousands of keys in float32.
    assert_close_to_scale(out, expected, rtol=1e-5, scale_tol=1e-5, name='out')
    for name, got, want in zip(gradient_names((len(inputs) - 3) // 2), grads, expected_grads):
        assert_close_to_scale(got, want, rtol=1e-4, scale_tol=2e-5, name=name)


# ------------------------------------------------------- both processes
def test_cpu_availability_follows_the_interpreter():
    assert triton_available('cpu') == INTERPRETED
    reason = triton_unavailable_reason('cpu')
    if TRITON_IMPORT_ERROR is not None:
        assert 'pip install triton' in reason
    elif not INTERPRETED:
        assert 'TRITON_INTERPRET=1' in reason
    assert not triton_available('meta')


@pytest.mark.skipif(INTERPRETED, reason='the interpreter is on in this process')
def test_cpu_without_interpreter_raises_naming_the_fix():
    q, k, v, query_factors, key_factors, floors = make_inputs(Case(2, 2, 0, True, 1.))
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1|pip install triton'):
        sape2_attention_triton(q, k, v, query_factors, key_factors, floors, True)


def _bad_inputs(problem: str):
    q, k, v, query_factors, key_factors, floors = make_inputs(Case(2, 3, 1, True, 1.))
    args = dict(q=q, k=k, v=v, query_factors=query_factors, key_factors=key_factors,
                floors=floors, root=True)
    if problem == 'half factors':
        args['query_factors'] = [f.half() for f in query_factors]
    elif problem == 'float64 q':
        args.update(q=q.double(), k=k.double(), v=v.double())
    elif problem == 'mixed q/v dtypes':
        args['v'] = v.half()
    elif problem == 'three axes':
        args.update(query_factors=query_factors[:1] * 3, key_factors=key_factors[:1] * 3)
    elif problem == 'missing key factor':
        args['key_factors'] = key_factors[:1]
    elif problem == 'no floors':
        args['floors'] = None
    elif problem == 'floors of other heads':
        args['floors'] = floors.expand(3, -1, -1)
    elif problem == 'k shape':
        args['k'] = k[..., :-1, :]
    elif problem == 'factor tokens':
        args['key_factors'] = [key_factors[0][..., 1:, :], key_factors[1]]
    elif problem == 'head dims':
        wide = torch.zeros(*q.shape[:-1], MAX_HEAD_DIMS + 1)
        args.update(q=wide, k=wide, v=wide)
    return args


@pytest.mark.parametrize('problem,error,match', [
    ('half factors', TypeError, 'factors must be float32'),
    ('float64 q', TypeError, 'share one dtype'),
    ('mixed q/v dtypes', TypeError, 'share one dtype'),
    ('three axes', ValueError, '1 or 2 axes'),
    ('missing key factor', ValueError, '1 or 2 axes'),
    ('no floors', ValueError, 'root=True needs the rounding floors'),
    ('floors of other heads', ValueError, 'floors must broadcast'),
    ('k shape', ValueError, 'q and k must have one shape'),
    ('factor tokens', ValueError, 'factors of axis 0'),
    ('head dims', ValueError, 'head dim of q/k must be in'),
])
def test_bad_inputs_raise_naming_the_problem(problem, error, match):
    with pytest.raises(error, match=match):
        sape2_attention_triton(**_bad_inputs(problem))


@pytest.mark.skipif(INTERPRETED or TRITON_IMPORT_ERROR is not None,
                    reason='needs Triton in compiled mode (not interpreting)')
@pytest.mark.parametrize('capability', [90, 80], ids=['sm90', 'sm80'])
def test_kernels_compile_for_the_gpu(capability, tmp_path, monkeypatch):
    # The interpreter runs Python, not what Triton's compiler accepts: compile
    # the three kernels down to a cubin (ptxas ships with Triton; no GPU needed).
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mmsape.ops.sape2 import sape2_triton_kernels as kernels
    monkeypatch.setenv('TRITON_CACHE_DIR', str(tmp_path))
    half_pointers = {'Q', 'K', 'V', 'OUT', 'GRAD_OUT', 'GRAD_Q', 'GRAD_K', 'GRAD_V'}
    constexprs = dict(NUM_AXES=2, ROOT=True, BLOCK_D=64, BLOCK_DV=64, BLOCK_M=32, BLOCK_N=32,
                      BLOCK_F=16, INTERPRETER=False)
    for kernel in (kernels.sape2_attention_forward_kernel,
                   kernels.sape2_attention_backward_query_kernel,
                   kernels.sape2_attention_backward_key_kernel):
        signature = {}
        for name in kernel.arg_names:
            if name in constexprs:
                signature[name] = 'constexpr'
            elif name.isupper() or name[0].isupper():
                signature[name] = '*bf16' if name in half_pointers else '*fp32'
            else:
                signature[name] = 'fp32' if name in ('qk_scale', 'bias_scale', 'scale',
                                                     'sign') else 'i32'
        source = ASTSource(kernel, signature, constexprs={
            name: value for name, value in constexprs.items() if name in signature})
        compiled = triton.compile(source, target=GPUTarget('cuda', capability, 32),
                                  options=dict(num_warps=4, num_stages=1))
        assert compiled.asm['cubin'], kernel.__name__


# ---------------------------------------------------------------- runner
def test_kernels_in_interpreter_process():
    """Run this file with Triton's interpreter on, in a child process."""
    if TRITON_IMPORT_ERROR is not None:
        message = f'Triton is not importable ({TRITON_IMPORT_ERROR})'
        if compiled_kernels_required():
            pytest.fail(f'{message}; MMSAPE_REQUIRE_COMPILED_KERNELS=1 requires the Triton '
                        f'kernels to be tested')
        pytest.skip(message)
    if INTERPRETED:
        pytest.skip('this process runs the kernel tests itself')
    env = dict(os.environ, TRITON_INTERPRET='1')
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', os.path.abspath(__file__), '-q', '-p',
         'no:cacheprovider'], cwd=ROOT_DIR, env=env, capture_output=True, text=True,
        timeout=900)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    skipped = re.search(r'(\d+) skipped', done.stdout)
    assert re.search(r'\d+ passed', done.stdout), report
    assert (int(skipped.group(1)) if skipped else 0) == CHILD_SKIPS, report
