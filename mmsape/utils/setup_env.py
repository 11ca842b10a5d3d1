"""Set-up shared by ``tools/train.py`` and ``tools/test.py``: config, scope, Runner.

mmsape's modules are registered through the ``locations`` of its registries
(:mod:`mmsape.registry`), never by importing ``mmsape.models`` from here: this
package sits below every other one (see the layout section of the README).
"""
import datetime
import importlib
import os.path as osp
import warnings
from typing import Optional

import torch
from mmengine import DefaultScope
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS, Registry
from mmengine.runner import Runner

from mmsape import registry

__all__ = [
    'register_all_modules', 'load_config', 'prepare_scope', 'init_cpu_process_group',
    'build_runner'
]

#: default_scope -> package whose ``utils.register_all_modules`` registers it.
SCOPE_PACKAGES = {
    'mmdet': 'mmdet',
    'mmseg': 'mmseg',
    'mmpretrain': 'mmpretrain',
    'mmsape': 'mmsape',
}


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every mmsape module that registers something, and optionally make
    ``mmsape`` the default scope.

    The modules are the ``locations`` of mmsape's registries, which MMEngine
    would otherwise import lazily on the first lookup. Importing them also
    imports :mod:`mmsape.engine`, which makes MMEngine load checkpoints safely
    and save them atomically.

    Args:
        init_default_scope (bool): Set the default scope to ``mmsape`` so that
            plain names resolve in mmsape's registries first. When another scope
            is current, a new ``mmsape-<timestamp>`` instance is created (as
            mmdet / mmseg do). Defaults to True.
    """
    for mmsape_registry in vars(registry).values():
        # The module also holds MMEngine's root registries (the parents).
        if isinstance(mmsape_registry, Registry) and mmsape_registry.scope == 'mmsape':
            mmsape_registry.import_from_location()

    if not init_default_scope:
        return
    never_created = (DefaultScope.get_current_instance() is None
                     or not DefaultScope.check_instance_created('mmsape'))
    if never_created:
        DefaultScope.get_instance('mmsape', scope_name='mmsape')
        return
    current = DefaultScope.get_current_instance()
    if current.scope_name != 'mmsape':
        warnings.warn(f'The current default scope "{current.scope_name}" is not "mmsape"; '
                      '`register_all_modules` forces it to "mmsape".', stacklevel=2)
        stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S.%f')
        DefaultScope.get_instance(f'mmsape-{stamp}', scope_name='mmsape')


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

    Also picks the gloo backend for multi-process runs on machines without GPUs.

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
    register_all_modules(init_default_scope=False)

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
