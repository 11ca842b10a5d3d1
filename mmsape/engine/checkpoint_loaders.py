"""Safe checkpoint loaders for the MMEngine schemes that would execute pickled code.

MMEngine's ``CheckpointLoader`` picks a loader by the prefix of the checkpoint
name (``load_from``, ``resume``, ``init_cfg=dict(type='Pretrained', ...)``). Its
loaders for URLs and for the names that resolve to URLs (``torchvision://``,
``open-mmlab://``, ``mmcls://``) unpickle downloads with ``weights_only=False``,
so a checkpoint from the internet can run any code; its local loader calls
``torch.load`` without the types that MMEngine's own checkpoints contain, so
resuming fails on torch >= 2.6. Importing this module registers mmsape's loaders
for exactly those prefixes (``force=True``, the registration MMEngine offers for
it): they resolve names as MMEngine does and load with
:func:`mmsape.utils.load_checkpoint_safely`. ``pavi://``, ``s3://`` and
``petrel://`` keep MMEngine's loaders, whose ``torch.load`` runs with the
default ``weights_only=True`` and the allowlist registered here process-wide.

A loader's name starts with ``load_from_``: ``CheckpointLoader`` logs the rest
as the backend name.
"""
import logging
import os
import os.path as osp
from typing import Any, Optional

from mmengine.logging import print_log

# The private helpers resolve names exactly as MMEngine's own loaders do.
from mmengine.runner.checkpoint import (
    CheckpointLoader,
    _get_mmengine_home,
    _process_mmcls_checkpoint,
    get_deprecated_model_names,
    get_external_models,
    get_mmcls_models,
    get_torchvision_models,
)

from mmsape.utils import allow_mmengine_checkpoint_types, load_checkpoint_safely, load_url_safely
from mmsape.utils.checkpoint import MapLocation

__all__ = [
    'load_from_local_safely', 'load_from_http_safely', 'load_from_torchvision_safely',
    'load_from_openmmlab_safely', 'load_from_mmcls_safely'
]


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local_safely(filename: str, map_location: MapLocation = None) -> Any:
    """Load a local checkpoint (``~`` expanded) without executing code."""
    return load_checkpoint_safely(osp.expanduser(filename), map_location=map_location)


@CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), force=True)
def load_from_http_safely(filename: str,
                          map_location: MapLocation = None,
                          model_dir: Optional[str] = None,
                          progress: bool = os.isatty(0)) -> Any:
    """Download a checkpoint into the torch hub cache, then load it safely.

    See :func:`mmsape.utils.load_url_safely` for the arguments.
    """
    return load_url_safely(filename, map_location=map_location, model_dir=model_dir,
                           progress=progress)


@CheckpointLoader.register_scheme(prefixes=('modelzoo://', 'torchvision://'), force=True)
def load_from_torchvision_safely(filename: str, map_location: MapLocation = None) -> Any:
    """``torchvision://<name>``: the URL torchvision publishes for ``<name>``."""
    prefix, model_name = filename.split('://', 1)
    if prefix == 'modelzoo':
        print_log('The URL scheme of "modelzoo://" is deprecated, please use '
                  '"torchvision://" instead', logger='current', level=logging.WARNING)
    return load_url_safely(get_torchvision_models()[model_name], map_location=map_location)


@CheckpointLoader.register_scheme(prefixes=('open-mmlab://', 'openmmlab://'), force=True)
def load_from_openmmlab_safely(filename: str, map_location: MapLocation = None) -> Any:
    """``open-mmlab://<name>``: a URL of MMEngine's model list (or of
    ``$MMENGINE_HOME/open_mmlab.json``), or a file under ``$MMENGINE_HOME``."""
    prefix, model_name = filename.split('://', 1)
    deprecated_names = get_deprecated_model_names()
    if model_name in deprecated_names:
        print_log(f'{prefix}://{model_name} is deprecated in favor of '
                  f'{prefix}://{deprecated_names[model_name]}', logger='current',
                  level=logging.WARNING)
        model_name = deprecated_names[model_name]
    model_url = get_external_models()[model_name]
    if model_url.startswith(('http://', 'https://')):
        return load_url_safely(model_url, map_location=map_location)
    return load_checkpoint_safely(osp.join(_get_mmengine_home(), model_url),
                                  map_location=map_location)


@CheckpointLoader.register_scheme(prefixes='mmcls://', force=True)
def load_from_mmcls_safely(filename: str, map_location: MapLocation = None) -> Any:
    """``mmcls://<name>``: an mmcls classifier's backbone weights."""
    model_name = filename.split('://', 1)[1]
    checkpoint = load_url_safely(get_mmcls_models()[model_name], map_location=map_location)
    return _process_mmcls_checkpoint(checkpoint)


# MMEngine's remaining loaders (pavi, ceph) and any other torch.load in the
# process accept the plain data types of MMEngine checkpoints too.
allow_mmengine_checkpoint_types()
