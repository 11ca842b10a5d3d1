"""What a failed build of the compiled SaPE² CPU kernel does: a warning and the
Python kernel by default; an error, and no test session, with
``MMSAPE_REQUIRE_COMPILED_KERNELS=1`` (which ``.ci/run`` sets).

Each test breaks the build for real in a child process: ``CXX=/bin/false`` as
the compiler and an empty ``TORCH_EXTENSIONS_DIR``, so that no cached build
is found.
"""
import os
import subprocess
import sys

import pytest

from builders import ROOT

CHOICE = '''
import torch
from mmsape.ops.sape2 import choose_sape2_kernel, load_cpu_kernel
print('loaded:', load_cpu_kernel() is not None)
print('kernel:', choose_sape2_kernel(bias='distance', impl='chunked', device='cpu',
                                     dtype=torch.float32).kernel)
'''


def broken_build_env(tmp_path, required: bool) -> dict:
    env = {name: value for name, value in os.environ.items()
           if name not in ('MMSAPE_SAPE2_CPU_KERNEL', 'MMSAPE_REQUIRE_COMPILED_KERNELS')}
    env.update(CXX='/bin/false', TORCH_EXTENSIONS_DIR=str(tmp_path / 'torch_extensions'),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')])))
    if required:
        env['MMSAPE_REQUIRE_COMPILED_KERNELS'] = '1'
    return env


def run(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_without_the_switch_a_failed_build_warns_and_the_python_kernel_runs(tmp_path):
    done = run(['-c', CHOICE], broken_build_env(tmp_path, required=False), tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert 'loaded: False' in done.stdout and 'kernel: python_blocks' in done.stdout
    assert 'RuntimeWarning: The compiled SaPE² CPU kernel could not be built' in done.stderr
    assert 'the Python kernel runs instead' in done.stderr


def test_with_the_switch_a_failed_build_is_an_error_naming_it(tmp_path):
    done = run(['-c', CHOICE], broken_build_env(tmp_path, required=True), tmp_path)
    assert done.returncode != 0
    assert 'loaded:' not in done.stdout
    assert 'RuntimeError: The compiled SaPE² CPU kernel could not be built' in done.stderr
    assert 'MMSAPE_REQUIRE_COMPILED_KERNELS=1 makes this an error' in done.stderr


@pytest.mark.parametrize('required', [True, False], ids=['required', 'optional'])
def test_the_test_session_ends_before_any_test_when_the_kernel_is_required(required, tmp_path):
    done = run(['-m', 'pytest', 'tests/test_layering.py', '-q', '-p', 'no:cacheprovider'],
               broken_build_env(tmp_path, required), ROOT)
    output = done.stdout + done.stderr
    if not required:
        assert done.returncode == 0 and ' passed' in output, output[-4000:]
        return
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, output[-4000:]
    assert 'The test session needs the compiled SaPE² CPU kernel' in output
    assert 'MMSAPE_REQUIRE_COMPILED_KERNELS=1 makes this an error' in output
    assert ' passed' not in output and ' failed' not in output
