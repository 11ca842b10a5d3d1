"""Distributed runs on CPU-only machines: the process group and the model wrapper."""
import os
import subprocess

import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from torch import nn

from mmsape.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMEngine's DDP wrapper for CPU processes (gloo).

    MMEngine's Runner always passes ``device_ids=[LOCAL_RANK]``, which torch's
    DDP rejects for a module on the CPU; here they are dropped. Selected by
    :func:`init_cpu_process_group`.
    """

    def __init__(self, module: nn.Module, device_ids=None, **kwargs) -> None:
        super().__init__(module=module, device_ids=None, **kwargs)


def init_cpu_process_group(cfg: Config) -> None:
    """Start the process group with gloo on a machine without GPUs, and wrap the
    model in :class:`CPUDistributedDataParallel` unless the config names a
    wrapper.

    MMEngine 0.10.7's 'pytorch' and 'slurm' launchers call
    ``torch.cuda.set_device`` unconditionally, which fails without a GPU (the
    Runner skips its own initialisation when a process group already exists),
    and wrap the model in DDP with ``device_ids``, which torch rejects for CPU
    modules.

    Args:
        cfg (Config): A config whose ``launcher`` is 'pytorch' (torchrun: the
            rank and world size come from ``RANK`` / ``WORLD_SIZE``) or
            'slurm' (``srun``: from ``SLURM_PROCID`` / ``SLURM_NTASKS``, the
            master from ``SLURM_NODELIST`` as MMEngine reads them);
            ``env_cfg.dist_cfg.backend`` and ``model_wrapper_cfg`` are set.
    """
    if cfg.launcher not in ('pytorch', 'slurm'):
        raise ValueError(f'launcher={cfg.launcher!r} needs GPUs; on CPU-only machines use '
                         "torchrun with --launcher pytorch or srun with --launcher slurm "
                         '(gloo backend).')
    if dist.is_initialized():
        return
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        print_log('No GPU: using the gloo backend for distributed training.',
                  logger='current')
        dist_cfg['backend'] = 'gloo'
    if cfg.launcher == 'slurm':
        set_slurm_environment(dist_cfg.get('port'))
    dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='mmsape.CPUDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))


def set_slurm_environment(port=None) -> None:
    """Set the variables of torch's ``env://`` start (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) from a slurm task's, as
    MMEngine's slurm launcher does: the master is the first host of
    ``SLURM_NODELIST`` (``scontrol show hostnames``) unless ``MASTER_ADDR`` is
    set, the port ``port``, else ``MASTER_PORT``, else 29500.
    """
    missing = [name for name in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
               if name not in os.environ]
    if missing:
        raise RuntimeError(f'launcher=slurm: {", ".join(missing)} not set; start the job '
                           'with srun (tools/slurm_train.sh), or use --launcher pytorch '
                           'with torchrun (tools/dist_train.sh).')
    if 'MASTER_ADDR' not in os.environ:
        os.environ['MASTER_ADDR'] = _first_slurm_host(os.environ['SLURM_NODELIST'])
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def _first_slurm_host(node_list: str) -> str:
    try:
        result = subprocess.run(['scontrol', 'show', 'hostnames', node_list],
                                capture_output=True, text=True, timeout=60)
        hosts = result.stdout.split() if result.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired) as error:
        hosts, result = [], error
    if not hosts:
        raise RuntimeError(f'launcher=slurm: cannot tell the first host of '
                           f'SLURM_NODELIST={node_list!r} (scontrol show hostnames: '
                           f'{getattr(result, "stderr", None) or result}); set MASTER_ADDR '
                           'to the address of the job\'s first node.')
    return hosts[0]
