"""Registering modules: mmsape's, and those of the toolbox a config belongs to.

mmsape's modules are registered through the ``locations`` of its registries
(:mod:`mmsape.registry`), never by importing ``mmsape.models`` from here: this
package sits below every other one (see the layout section of the README).
Reading configs and building Runners is :mod:`mmsape.apis`'s.
"""
import datetime
import importlib
import warnings

from mmengine import DefaultScope
from mmengine.config import Config
from mmengine.registry import Registry

from mmsape import registry

__all__ = ['register_all_modules', 'prepare_scope']

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


def prepare_scope(cfg: Config) -> str:
    """Register the modules of the config's ``default_scope`` and of mmsape.

    Args:
        cfg (Config): A config of mmdet, mmseg, mmpretrain or mmsape.

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
    return scope
