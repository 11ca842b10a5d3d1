"""mmsape.engine.wrappers: a slurm task's variables become torch's ``env://``
start as MMEngine's slurm launcher sets them (the first host of the node list
from ``scontrol``), for the gloo process group of CPU-only machines."""
import os
import stat
from pathlib import Path

import pytest
from mmengine.config import Config

from mmsape.engine import init_cpu_process_group
from mmsape.engine.wrappers import set_slurm_environment

TORCH_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def write_scontrol(folder: Path) -> Path:
    """An ``scontrol`` that expands ``node-[1-2]`` as slurm does."""
    script = folder / 'scontrol'
    script.write_text('#!/usr/bin/env bash\n'
                      '[ "$1 $2 $3" = "show hostnames node-[1-2]" ] && '
                      'printf "node-1\\nnode-2\\n"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.fixture
def slurm_task(monkeypatch, tmp_path):
    """The variables srun gives the second task on the second node of a 2 x 4 job."""
    for name in TORCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('PATH', f'{write_scontrol(tmp_path)}{os.pathsep}{os.environ["PATH"]}')
    for name, value in dict(SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_LOCALID='1',
                            SLURM_NODELIST='node-[1-2]').items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_slurm_variables_become_torch_env(slurm_task):
    set_slurm_environment()
    assert {name: os.environ[name] for name in TORCH_VARIABLES} == dict(
        RANK='5', WORLD_SIZE='8', LOCAL_RANK='1', MASTER_ADDR='node-1', MASTER_PORT='29500')


def test_set_master_and_configured_port_win(slurm_task):
    slurm_task.setenv('MASTER_ADDR', '10.0.0.7')
    slurm_task.setenv('MASTER_PORT', '29999')
    set_slurm_environment(port=29612)
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == ('10.0.0.7', '29612')


def test_node_list_that_cannot_be_expanded_names_master_addr(slurm_task):
    slurm_task.setenv('SLURM_NODELIST', 'rack-[7-9]')  # the stub expands nothing else
    with pytest.raises(RuntimeError, match=r"first host of SLURM_NODELIST='rack-\[7-9\]'.*"
                                           'set MASTER_ADDR'):
        set_slurm_environment()


def test_slurm_launcher_outside_srun_names_the_launchers(slurm_task):
    slurm_task.delenv('SLURM_PROCID')
    with pytest.raises(RuntimeError, match='SLURM_PROCID not set; start the job with srun '
                                           r'\(tools/slurm_train.sh\).*--launcher pytorch'):
        set_slurm_environment()


def test_mpi_without_gpus_names_the_cpu_launchers():
    with pytest.raises(ValueError, match=r"launcher='mpi' needs GPUs.*--launcher pytorch.*"
                                         '--launcher slurm'):
        init_cpu_process_group(Config(dict(launcher='mpi')))
