"""Checkpoint safety without mmsape's tools: the demo segmentation config trained by
a bare ``mmengine.runner.Runner.from_cfg`` (``bare_runner_train.py``) saves
atomically, resumes after a SIGKILL in the middle of a save, and refuses a
malicious ``load_from``. Everything comes from the config's ``custom_imports`` and
hook types, as with mmdet's or mmseg's own ``tools/train.py``."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmsape.testing.demo_data import ensure_demo_data
from mmsape.utils import load_checkpoint_safely

ROOT = Path(__file__).resolve().parents[2]
TRAIN = Path(__file__).with_name('bare_runner_train.py')
CONFIG = 'configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py'
MAX_ITERS = 4
# Training only (no validation at the last iteration), small batches, a
# checkpoint every 2 iterations, every loss logged, deterministic kernels.
OPTIONS = [f'train_cfg.max_iters={MAX_ITERS}', 'train_dataloader.batch_size=2',
           'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
           'val_dataloader=None', 'val_cfg=None', 'val_evaluator=None',
           'randomness.deterministic=True']
pytestmark = pytest.mark.e2e


@pytest.fixture(scope='module')
def demo_root() -> Path:
    return ensure_demo_data(ROOT / 'data' / 'demo')


def bare_runner(work_dir: Path, *args: str, options=()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    return subprocess.run(
        [sys.executable, str(TRAIN), CONFIG, str(work_dir), *args, '--cfg-options', *OPTIONS,
         *options], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def losses_per_run(work_dir: Path) -> list:
    """``{iteration: loss}`` of each run in ``work_dir``, oldest first."""
    runs = []
    for log in sorted(work_dir.glob('*/vis_data/scalars.json')):
        records = [json.loads(line) for line in log.read_text().splitlines()]
        runs.append({r['iter']: r['loss'] for r in records if 'loss' in r})
    return runs


def test_sigkill_in_save_then_resume_repeats_the_uninterrupted_run(demo_root, tmp_path):
    work_dir = tmp_path / 'work'
    result = bare_runner(work_dir, '--kill-in-save', str(MAX_ITERS))
    assert result.returncode == -signal.SIGKILL, result.stderr[-6000:]
    # Killed inside the save of the last iteration: its bytes sit in a temporary
    # file, never at iter_4.pth, and the pointer still names iteration 2.
    assert not (work_dir / f'iter_{MAX_ITERS}.pth').exists()
    assert list(work_dir.glob(f'.iter_{MAX_ITERS}.pth.*.tmp'))
    resume_from = (work_dir / 'last_checkpoint').read_text()
    assert resume_from == str(work_dir / 'iter_2.pth')
    checkpoint = load_checkpoint_safely(resume_from)
    assert checkpoint['meta']['iter'] == 2
    assert {'state_dict', 'optimizer', 'param_schedulers', 'message_hub'} <= set(checkpoint)

    result = bare_runner(work_dir, '--resume')
    assert result.returncode == 0, result.stderr[-6000:]
    final = load_checkpoint_safely(work_dir / f'iter_{MAX_ITERS}.pth')
    assert final['meta']['iter'] == MAX_ITERS
    # The killed run trained iterations 1-4 without interruption (the kill came
    # after its last loss was logged); the resumed run repeats 3-4 from iter_2.
    uninterrupted, resumed = losses_per_run(work_dir)
    assert sorted(uninterrupted) == [1, 2, 3, 4] and sorted(resumed) == [3, 4]
    for iteration, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[iteration], rel=1e-5, abs=1e-6)


def test_malicious_load_from_is_refused(demo_root, tmp_path, write_malicious_checkpoint):
    """MMEngine's own CheckpointHook here: the config's ``custom_imports`` of
    ``mmsape.engine`` alone makes the Runner refuse the file."""
    marker = tmp_path / 'pwned'
    evil = write_malicious_checkpoint(tmp_path / 'evil.pth', marker)
    result = bare_runner(tmp_path / 'work', options=[
        f'load_from={evil}', 'default_hooks.checkpoint.type=CheckpointHook'])
    assert result.returncode != 0
    assert 'UnsafeCheckpointError' in result.stderr and 'refused for safety' in result.stderr
    assert str(evil) in result.stderr
    assert not marker.exists()
    assert not list((tmp_path / 'work').glob('iter_*.pth'))  # refused before training
    # Control: the payload is real.
    torch.load(evil, weights_only=False)
    assert marker.exists()
