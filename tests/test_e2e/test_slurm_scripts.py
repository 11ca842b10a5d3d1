"""tools/slurm_train.sh and tools/slurm_test.sh run a single-task job on this
machine: a stub ``srun`` on PATH records its options and runs the command with
the variables slurm gives a task (a stub ``scontrol`` expands the node list), so
that MMEngine's 'slurm' launcher starts a one-process gloo group on the CPU; the
run uses ``--auto-scale-lr``, whose factor shows in the logged learning rate."""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmsape.testing.demo_data import ensure_demo_data

from builders import DEMO_CONFIGS, ROOT

pytestmark = pytest.mark.e2e
CONFIG = DEMO_CONFIGS['seg']

SRUN = '''#!/usr/bin/env bash
# srun for a one-task job here: record the options, drop them, run the command
printf '%s\\n' "$@" > "$(dirname "$0")/srun.args"
while [ $# -gt 0 ]; do
    case "$1" in
        -p) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
export SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0 SLURM_NODELIST=localhost SLURM_JOB_ID=7
exec "$@"
'''
SCONTROL = '''#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && echo "$3"
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture
def slurm_bin(tmp_path) -> Path:
    folder = tmp_path / 'bin'
    folder.mkdir()
    for name, text in (('srun', SRUN), ('scontrol', SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def run_script(script: str, *args, slurm_bin: Path, **variables) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items()
           if name not in ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env.update(PATH=f'{slurm_bin}{os.pathsep}{env["PATH"]}', PYTHON=sys.executable,
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS='1', **variables)
    result = subprocess.run(['bash', script, *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


def test_slurm_scripts_train_and_test_a_single_task_job(slurm_bin, tmp_path):
    ensure_demo_data(ROOT / 'data' / 'demo')
    work_dir = tmp_path / 'work'
    # 2 iterations, no validation, no lr schedule; the config's lr (1e-3) is
    # for its batch of 4, scaled to 4 / 16 of it against a base batch of 16
    result = run_script(
        'tools/slurm_train.sh', 'cpu', 'mmsape-e2e', CONFIG, work_dir, '--auto-scale-lr',
        '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_begin=100',
        'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=2',
        'param_scheduler=[]', 'auto_scale_lr.base_batch_size=16', slurm_bin=slurm_bin,
        GPUS='1', GPUS_PER_NODE='1', CPUS_PER_TASK='2', SRUN_ARGS='--qos=debug')
    options = (slurm_bin / 'srun.args').read_text().splitlines()
    assert options[:9] == ['-p', 'cpu', '--job-name=mmsape-e2e', '--gres=gpu:1', '--ntasks=1',
                           '--ntasks-per-node=1', '--cpus-per-task=2', '--kill-on-bad-exit=1',
                           '--qos=debug']
    assert options[9:13] == [sys.executable, '-u', 'tools/train.py', CONFIG]
    assert f'--work-dir={work_dir}' in options and '--launcher=slurm' in options
    output = result.stdout + result.stderr
    assert 'using the gloo backend' in output
    assert 'launcher: slurm' in output and 'Distributed training: True' in output
    assert 'Scaling the original LR by 0.25' in output
    records = [json.loads(line) for line in
               next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()]
    assert [record['lr'] for record in records if 'lr' in record] == pytest.approx(
        [1e-3 * 4 / 16] * 2)
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.is_file()

    metrics = tmp_path / 'metrics.json'
    run_script('tools/slurm_test.sh', 'cpu', 'mmsape-e2e-test', CONFIG, checkpoint,
               '--work-dir', tmp_path / 'test', '--metrics-out', metrics, slurm_bin=slurm_bin,
               GPUS='1', GPUS_PER_NODE='1')
    options = (slurm_bin / 'srun.args').read_text().splitlines()
    assert options[:8] == ['-p', 'cpu', '--job-name=mmsape-e2e-test', '--gres=gpu:1',
                           '--ntasks=1', '--ntasks-per-node=1', '--cpus-per-task=5',
                           '--kill-on-bad-exit=1']
    assert options[8:13] == [sys.executable, '-u', 'tools/test.py', CONFIG,
                             str(checkpoint)]
    assert math.isfinite(json.loads(metrics.read_text())['mIoU'])
