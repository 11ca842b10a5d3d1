"""The CUDA paths of the toolkit, on a GPU; every test is skipped elsewhere, saying so.

* every registered encoding: ``PosEncViT`` forward+backward under bfloat16
  autocast, finite and close to float32 on the same GPU;
* ``SaPE2(impl='auto')``: takes the fused Triton kernels where they run, and
  matches ``impl='dense'`` (forward and every gradient) at 1024 and 4096 tokens;
* ``torch.compile`` (Inductor) of a SaPE² backbone: one graph, eager's results;
* ``tools/train.py --amp``, ``tools/dist_train.sh`` (NCCL), the Mask R-CNN
  demo where mmcv has its CUDA ops, ``tools/verify_env.py`` and the benchmarks'
  ``--device cuda``.

``benchmarks/gpu_check.sh`` runs this file. The kernels themselves are tested
against a float64 reference in ``tests/test_ops/test_sape2_triton.py``.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmsape.models.pos_encodings import SaPE2, TokenGrid, registered_pos_encodings
from mmsape.ops.sape2.sape2_attention_triton import triton_unavailable_reason

from builders import DEMO_CONFIGS, kernel_that_ran, run_tool, short_run, tiny_vit

ROOT = Path(__file__).resolve().parents[2]
SEG_DEMO, DET_DEMO = DEMO_CONFIGS['seg'], DEMO_CONFIGS['det']
#: Encodings that cannot be built from their type alone, and what to build instead.
CONFIGS = {'PositionEncodingStack': [dict(type='LearnedAPE'), dict(type='SaPE2')]}

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU (torch.cuda.is_available() is False)')
TRITON_UNAVAILABLE = (triton_unavailable_reason('cuda') if torch.cuda.is_available()
                      else 'needs a CUDA GPU')
needs_triton = pytest.mark.skipif(TRITON_UNAVAILABLE is not None, reason=str(TRITON_UNAVAILABLE))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``|actual - expected| / |expected|`` (Frobenius norms; 0 where both are 0)."""
    difference = (actual.float() - expected.float()).norm()
    return (difference / expected.float().norm().clamp_min(1e-30)).item()


def output_and_gradients(model, images, amp: bool):
    """The model's first output and the gradients of every parameter, for a
    fixed cotangent, under bfloat16 autocast or in float32."""
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp):
        out = model(images)[0]
    weight = torch.randn(out.shape, device='cuda', generator=torch.Generator('cuda').manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    return out, torch.autograd.grad((out.float() * weight).sum(), params)


@pytest.mark.parametrize('encoding', registered_pos_encodings())
def test_every_encoding_runs_under_bfloat16_autocast_close_to_float32(encoding):
    # A 6 x 10 patch grid and a class token: 61 tokens, several Triton tiles.
    model = tiny_vit(CONFIGS.get(encoding, dict(type=encoding)), seed=0, train=True,
                     embed_dims=64, num_heads=4).cuda()
    images = torch.randn(2, 3, 48, 80, device='cuda',
                         generator=torch.Generator('cuda').manual_seed(0))
    out32, grads32 = output_and_gradients(model, images, amp=False)
    out16, grads16 = output_and_gradients(model, images, amp=True)
    assert torch.isfinite(out16).all() and all(torch.isfinite(g).all() for g in grads16)
    # bfloat16 keeps 8 bits: a few 2^-8 after two blocks and a backward.
    assert relative_error(out16, out32) < 0.03
    flat16 = torch.cat([g.flatten() for g in grads16])
    flat32 = torch.cat([g.flatten() for g in grads32])
    assert relative_error(flat16, flat32) < 0.08


def sape2_layer(distance: str, impl: str, side: int):
    torch.manual_seed(0)
    sape = SaPE2(embed_dims=6 * 64, num_heads=6, num_layers=1, distance=distance,
                 impl=impl).cuda()
    grid = TokenGrid(side, side, num_prefix=1)
    generator = torch.Generator('cuda').manual_seed(0)
    q, k, v = (torch.randn(1, 6, grid.num_tokens, 64, device='cuda', generator=generator)
               .requires_grad_() for _ in range(3))
    return sape, grid, q, k, v


@needs_triton
@pytest.mark.parametrize('distance', ['l2', 'squared'])
@pytest.mark.parametrize('side', [32, 64], ids=['1024-tokens', '4096-tokens'])
def test_sape2_auto_takes_triton_and_matches_dense(side, distance):
    sape, grid, q, k, v = sape2_layer(distance, 'auto', side)
    assert sape.resolve_impl(grid, q) == 'chunked'
    out = sape.attention(0, q, k, v, grid)
    assert kernel_that_ran(out) == 'sape2_attention_triton'
    assert sape.last_kernel.kernel == 'triton'  # what the user is shown
    cotangent = torch.randn(out.shape, device='cuda',
                            generator=torch.Generator('cuda').manual_seed(2))
    leaves = [q, k, v, *sape.parameters()]
    grads = torch.autograd.grad(out, leaves, cotangent)
    sape.impl = 'dense'
    expected = sape.attention(0, q, k, v, grid)
    expected_grads = torch.autograd.grad(expected, leaves, cotangent)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, expected_grads, strict=True):
        assert relative_error(got, want) < 1e-3


@needs_triton
def test_sape2_auto_in_bfloat16_at_4096_tokens_is_close_to_float32():
    sape, grid, q, k, v = sape2_layer('l2', 'auto', 64)
    out32 = sape.attention(0, q, k, v, grid)
    out16 = sape.attention(0, q.bfloat16(), k.bfloat16(), v.bfloat16(), grid)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    assert relative_error(out16, out32) < 0.02


def test_compiled_sape2_backbone_matches_eager():
    model = tiny_vit('SaPE2', seed=0, train=True, embed_dims=64, num_heads=4).cuda()
    images = torch.randn(2, 3, 48, 80, device='cuda')
    compiled = torch.compile(model, fullgraph=True)
    expected, expected_grads = output_and_gradients(model, images, amp=False)
    actual, grads = output_and_gradients(compiled, images, amp=False)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, expected_grads, strict=True):
        assert relative_error(got, want) < 1e-3


# ------------------------------------------------------------------ tools
@pytest.fixture(scope='module')
def demo_root() -> Path:
    from mmsape.testing.demo_data import ensure_demo_data
    return ensure_demo_data(ROOT / 'data' / 'demo')


def mmcv_cuda_ops_missing() -> str:
    """Why mmcv's CUDA ops cannot run here ('' when they can)."""
    if not torch.cuda.is_available():
        return 'needs a CUDA GPU'
    result = subprocess.run([sys.executable, 'tools/verify_env.py', '--only', 'mmcv.ops (CUDA)'],
                            cwd=ROOT, capture_output=True, text=True)
    return '' if result.returncode == 0 else result.stdout.strip()[-500:]


def test_verify_env_passes_with_the_cuda_checks():
    result = run_tool('tools/verify_env.py')
    assert 'mmcv.ops (CUDA)' in result.stdout


@pytest.mark.parametrize('config', [SEG_DEMO, DET_DEMO], ids=['upernet', 'mask-rcnn'])
def test_train_with_amp_on_the_gpu(config, demo_root, tmp_path):
    if config == DET_DEMO and mmcv_cuda_ops_missing():
        pytest.skip(f"mmdet's RoIAlign / NMS need mmcv's CUDA ops: {mmcv_cuda_ops_missing()}")
    result = run_tool('tools/train.py', config, '--amp', '--work-dir', tmp_path,
                      '--cfg-options', *short_run(config, iters=4, checkpoint_every=4))
    log = result.stdout + result.stderr
    assert 'AmpOptimWrapper' in log
    assert (tmp_path / 'iter_4.pth').is_file()
    checkpoint = torch.load(tmp_path / 'iter_4.pth', map_location='cpu', weights_only=False)
    weights = checkpoint['state_dict']
    assert next(iter(weights.values())).device.type == 'cpu'
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_dist_train_with_nccl(demo_root, tmp_path):
    processes = min(2, torch.cuda.device_count())
    env = dict(os.environ, PORT='29531', PYTHON=sys.executable)
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', SEG_DEMO, str(processes), '--work-dir', str(tmp_path),
         '--cfg-options', *short_run(SEG_DEMO, iters=4, checkpoint_every=4)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]
    assert 'Distributed training: True' in log
    assert 'using the gloo backend' not in log
    assert (tmp_path / 'iter_4.pth').is_file()


@pytest.mark.parametrize('command', [
    ['benchmarks/bench_sape2_attention.py', '--device', 'cuda', '--dtype', 'bfloat16',
     '--tokens', '64', '256', '--repeats', '1'],
    ['benchmarks/bench_backbone.py', '--device', 'cuda', '--tokens', '64', '--repeats', '1',
     '--encodings', 'ape', 'sape2', 'sape2_window', '--amp'],
    ['benchmarks/bench_sape2_triton.py', '--tokens', '64', '256', '--repeats', '1'],
], ids=['attention', 'backbone', 'triton'])
def test_benchmarks_run_on_cuda(command):
    if 'triton' in command[0] and TRITON_UNAVAILABLE is not None:
        pytest.skip(str(TRITON_UNAVAILABLE))
    table = [line for line in run_tool(*command).stdout.splitlines() if line.startswith('| ')]
    rows = table[2:]
    assert rows and all('failed' not in row for row in rows), '\n'.join(table)
    assert all(math.isfinite(float(row.split('|')[3])) for row in rows)
