"""A wheel built from a clean checkout carries the sources of the compiled SaPE²
CPU kernel, and an install of it builds and runs that kernel.

Slow (one to three minutes, most of it compiling): the wheel is built from the
git-tracked files only, and the kernel is compiled from the installed copy in an
empty ``TORCH_EXTENSIONS_DIR``, as on a user's machine after ``pip install``.
"""
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from builders import ROOT, build_wheel, copy_checkout, install_wheel

pytestmark = [pytest.mark.e2e, pytest.mark.builds_kernel]

CSRC = 'mmsape/ops/sape2/csrc'

#: Run in the installed copy: a float32 CPU SaPE2 layer, its visible kernel
#: choice, the operator that ran and the output against impl='dense'.
FORWARD = '''
import json
import torch
import mmsape
from mmsape.models.pos_encodings import SaPE2, TokenGrid
from mmsape.ops.sape2 import load_cpu_kernel

sape = SaPE2(embed_dims=16, num_heads=2, num_layers=1)
grid = TokenGrid(3, 4, num_prefix=1)
q, k, v = torch.randn(3, 2, 2, grid.num_tokens, 8).unbind(0)
out = sape.attention(0, q.requires_grad_(), k, v, grid)
kernel = sape.last_kernel.kernel
sape.impl = 'dense'
dense = sape.attention(0, q, k, v, grid)
print(json.dumps(dict(
    package=mmsape.__file__, kernel=kernel, operator=out.grad_fn.name(),
    extension=load_cpu_kernel().__file__, difference=(out - dense).abs().max().item())))
'''


def tracked_csrc_files() -> list:
    names = subprocess.run(['git', 'ls-files', CSRC], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert any(name.endswith('.h') for name in names), names
    return names


@pytest.fixture(scope='module')
def clean_checkout(tmp_path_factory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp('checkout'))


@pytest.fixture(scope='module')
def wheel(clean_checkout, tmp_path_factory) -> Path:
    return build_wheel(clean_checkout, tmp_path_factory.mktemp('dist'))


def test_the_wheel_carries_every_kernel_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in tracked_csrc_files() if name not in names]
    assert not missing, f'{wheel.name} lacks {missing}'


def test_the_sdist_carries_every_kernel_source(clean_checkout, tmp_path):
    subprocess.run([sys.executable, 'setup.py', '-q', 'sdist', '--dist-dir', str(tmp_path)],
                   cwd=clean_checkout, check=True, capture_output=True)
    sdist, = tmp_path.glob('mmsape-*.tar.gz')
    with tarfile.open(sdist) as archive:
        names = {name.split('/', 1)[1] for name in archive.getnames() if '/' in name}
    missing = [name for name in tracked_csrc_files() if name not in names]
    assert not missing, f'{sdist.name} lacks {missing}'


def test_an_installed_wheel_builds_and_runs_the_compiled_kernel(wheel, tmp_path):
    site = install_wheel(wheel, tmp_path / 'site')
    extensions = tmp_path / 'torch_extensions'
    env = {name: value for name, value in os.environ.items()
           if name not in ('MMSAPE_SAPE2_CPU_KERNEL', 'PYTHONPATH')}
    # A failed build is an error, not a fallback that would pass unnoticed.
    env.update(PYTHONPATH=str(site), TORCH_EXTENSIONS_DIR=str(extensions),
               MMSAPE_REQUIRE_COMPILED_KERNELS='1')
    # Outside the repository, so that only the installed copy can be imported.
    done = subprocess.run([sys.executable, '-c', FORWARD], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result['package']).is_relative_to(site)
    assert result['kernel'] == 'cpu_tiles'
    assert 'mmsape_sape2_attention_cpu_' in result['operator']
    assert Path(result['extension']).is_relative_to(extensions)
    assert result['difference'] < 1e-5
    # The user saw which kernel ran; it was built from the installed sources.
    assert "runs cpu_tiles (float32 on the CPU" in done.stdout + done.stderr
    build_file, = extensions.glob('*/build.ninja')
    assert str(site / CSRC / 'sape2_attention_cpu.cpp') in build_file.read_text()
