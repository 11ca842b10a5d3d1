"""End to end, with the real mmdet / mmseg / mmpretrain and MMEngine machinery.

Each task trains for a few iterations on the generated demo data (images of
different sizes in one batch), saves a checkpoint, is reloaded by
``tools/test.py`` and evaluated with the real metric.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmsape.testing.demo_data import ensure_demo_data

from builders import DEMO_CONFIGS, DEMO_METRICS, run_tool, short_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope='module')
def demo_root() -> Path:
    return ensure_demo_data(ROOT / 'data' / 'demo')


@pytest.mark.parametrize('task', sorted(DEMO_CONFIGS))
def test_train_then_test_gives_metric(task, demo_root, tmp_path):
    config, metric = DEMO_CONFIGS[task], DEMO_METRICS[task]
    # after 4 iterations no box would pass the detector's usual score threshold
    test_options = ['model.test_cfg.rcnn.score_thr=0.0'] if task == 'det' else []
    run_tool('tools/train.py', config, '--work-dir', tmp_path, '--cfg-options',
             *short_run(config, iters=4, checkpoint_every=4), *test_options)
    checkpoint = tmp_path / 'iter_4.pth'
    assert checkpoint.is_file()
    out = tmp_path / 'metrics.json'
    run_tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path / 'test',
             '--metrics-out', out, *(['--cfg-options', *test_options] if test_options else []))
    metrics = json.loads(out.read_text())
    assert metric in metrics and math.isfinite(metrics[metric])


def read_losses(work_dir: Path) -> dict:
    """iteration -> loss from MMEngine's scalars.json (the last run in work_dir)."""
    logs = sorted(work_dir.glob('*/vis_data/scalars.json'))
    losses = {}
    for log in logs:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if 'loss' in record:
                losses[record['iter']] = record['loss']
    return losses


def test_resume_after_kill_repeats_the_uninterrupted_run(demo_root, tmp_path):
    """SIGKILL mid-run; --resume continues from the last checkpoint with the
    same iteration, optimizer and scheduler state: identical losses."""
    config = DEMO_CONFIGS['seg']
    options = ['--cfg-options', *short_run(config, iters=8, checkpoint_every=2),
               'randomness.deterministic=True']
    reference = tmp_path / 'uninterrupted'
    run_tool('tools/train.py', config, '--work-dir', reference, *options)

    interrupted = tmp_path / 'interrupted'
    process = subprocess.Popen([sys.executable, 'tools/train.py', config, '--work-dir',
                                str(interrupted), *options], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (interrupted / 'iter_4.pth').exists() and process.poll() is None:
        assert time.time() < deadline, 'training did not reach iteration 4'
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (interrupted / 'iter_8.pth').exists(), 'the run finished before the kill'

    run_tool('tools/train.py', config, '--work-dir', interrupted, '--resume', *options)
    assert (interrupted / 'iter_8.pth').is_file()
    # Iterations up to the kill come from the first run, the rest from the
    # resumed one: together they must repeat the uninterrupted run.
    expected, resumed = read_losses(reference), read_losses(interrupted)
    assert sorted(expected) == sorted(resumed) == list(range(1, 9))
    for iteration in range(1, 9):
        assert resumed[iteration] == pytest.approx(expected[iteration], rel=1e-5, abs=1e-6)


def test_two_process_gloo_training_and_testing(demo_root, tmp_path):
    """torchrun --nproc_per_node 2 with MMEngine's 'pytorch' launcher on CPU."""
    config, metric = DEMO_CONFIGS['seg'], DEMO_METRICS['seg']
    env = dict(os.environ, OMP_NUM_THREADS='1', MASTER_PORT='29517')
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                '--master_port', '29517']
    result = subprocess.run(
        [*torchrun, 'tools/train.py', config, '--launcher', 'pytorch', '--work-dir',
         str(tmp_path), '--cfg-options', *short_run(config, iters=4, checkpoint_every=4)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    assert 'gloo' in result.stdout + result.stderr
    out = tmp_path / 'metrics.json'
    result = subprocess.run(
        [*torchrun, 'tools/test.py', config, str(tmp_path / 'iter_4.pth'), '--launcher',
         'pytorch', '--work-dir', str(tmp_path / 'test'), '--metrics-out', str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    assert math.isfinite(json.loads(out.read_text())[metric])


def build_and_step(config: str, encoding: str, work_dir: Path) -> float:
    """Build the task's Runner with another position encoding, train one
    iteration, return the loss."""
    from mmsape.apis import build_train_runner
    runner = build_train_runner(ROOT / config, {
        'model.backbone.pos_encoding.type': encoding, 'train_cfg.max_iters': 1,
        'train_cfg.val_interval': 100, 'default_hooks.checkpoint.interval': 100,
        'custom_hooks': []}, work_dir=str(work_dir))
    runner.train()
    return runner.message_hub.get_scalar('train/loss').current()


def registered_encodings() -> list:
    from mmsape.models.pos_encodings import registered_pos_encodings
    return [name for name in registered_pos_encodings() if name != 'PositionEncodingStack']


@pytest.mark.parametrize('task', sorted(DEMO_CONFIGS))
def test_every_encoding_swaps_in_by_config(task, demo_root, tmp_path, monkeypatch):
    """model.backbone.pos_encoding.type=<any registered> trains in every task."""
    monkeypatch.chdir(ROOT)
    config = DEMO_CONFIGS[task]
    for encoding in registered_encodings():
        loss = build_and_step(config, encoding, tmp_path / encoding)
        assert math.isfinite(loss), f'{task} with {encoding}: loss {loss}'
