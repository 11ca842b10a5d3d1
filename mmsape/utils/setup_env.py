"""Register mmsape's modules in the OpenMMLab manner."""
import datetime
import warnings

from mmengine import DefaultScope


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every mmsape module that registers something, and optionally make
    ``mmsape`` the default scope.

    Args:
        init_default_scope (bool): Set the default scope to ``mmsape`` so that
            plain names resolve in mmsape's registries first. When another scope
            is current, a new ``mmsape-<timestamp>`` instance is created (as
            mmdet / mmseg do). Defaults to True.
    """
    import mmsape.datasets  # noqa: F401
    import mmsape.engine  # noqa: F401
    import mmsape.models  # noqa: F401

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
