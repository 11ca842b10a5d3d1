"""Distributed runs on CPU-only machines: the process group and the model wrapper."""
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

    MMEngine 0.10.7's 'pytorch' launcher calls ``torch.cuda.set_device``
    unconditionally, which fails without a GPU (the Runner skips its own
    initialisation when a process group already exists), and wraps the model
    in DDP with ``device_ids``, which torch rejects for CPU modules.

    Args:
        cfg (Config): A config whose ``launcher`` is 'pytorch' (torchrun);
            ``env_cfg.dist_cfg.backend`` and ``model_wrapper_cfg`` are set.
    """
    if cfg.launcher != 'pytorch':
        raise ValueError(f'launcher={cfg.launcher!r} needs GPUs; on CPU-only machines use '
                         f'torchrun with --launcher pytorch (gloo backend).')
    if dist.is_initialized():
        return
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        print_log('No GPU: using the gloo backend for distributed training.',
                  logger='current')
        dist_cfg['backend'] = 'gloo'
    dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='mmsape.CPUDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
