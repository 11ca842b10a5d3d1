"""What ``tools/train.py`` and ``tools/test.py`` share: config, scope set-up, Runner."""
import importlib
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

#: default_scope -> package whose ``utils.register_all_modules`` registers it.
SCOPE_PACKAGES = {
    'mmdet': 'mmdet',
    'mmseg': 'mmseg',
    'mmpretrain': 'mmpretrain',
    'mmsape': 'mmsape',
}


def load_config(path: str, cfg_options: Optional[dict] = None, launcher: str = 'none',
                work_dir: Optional[str] = None) -> Config:
    """Read a config, apply ``--cfg-options``, and prepare its scope.

    ``work_dir`` defaults to ``./work_dirs/<config name>`` as in mmdet / mmseg.
    """
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    prepare_scope(cfg)
    return cfg


def prepare_scope(cfg: Config) -> str:
    """Register the modules of the config's ``default_scope`` and of mmsape.

    Also makes MMEngine load checkpoints safely (``weights_only=True`` with the
    types its own checkpoints need) and save them atomically, and picks the gloo
    backend for multi-process runs on machines without GPUs.

    Returns:
        str: The scope.
    """
    scope = cfg.get('default_scope', None) or 'mmsape'
    if scope not in SCOPE_PACKAGES:
        raise ValueError(f"default_scope={scope!r} is not supported; use one of "
                         f"{sorted(SCOPE_PACKAGES)} (classification uses 'mmpretrain').")
    package = SCOPE_PACKAGES[scope]
    try:
        utils = importlib.import_module(f'{package}.utils')
    except ImportError as error:
        raise ImportError(f"The config's default_scope is {scope!r} but {package} cannot be "
                          f'imported ({error}); run tools/setup_env.sh.') from error
    utils.register_all_modules(init_default_scope=False)

    from mmsape.utils import register_all_modules
    from mmsape.utils.checkpoint import patch_mmengine_checkpointing
    register_all_modules(init_default_scope=False)
    patch_mmengine_checkpointing()

    if cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available():
        init_cpu_process_group(cfg)
    return scope


def init_cpu_process_group(cfg: Config) -> None:
    """Start the process group with gloo on machines without GPUs.

    MMEngine 0.10.7's 'pytorch' launcher calls ``torch.cuda.set_device``
    unconditionally, which fails without a GPU (the Runner skips its own
    initialisation when a process group already exists), and wraps the model
    in DDP with ``device_ids``, which torch rejects for CPU modules.
    """
    import torch.distributed as dist
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


def build_runner(cfg: Config) -> Runner:
    """MMEngine's Runner, or the config's ``runner_type``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
