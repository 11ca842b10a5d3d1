# Copyright (c) OpenMMLab. All rights reserved.
"""Load checkpoints without ever executing code stored in them.

:func:`load_checkpoint_safely` reads local files with
``torch.load(weights_only=True)`` plus the allowlist of
:mod:`mmsape.utils.safe_globals` (or as safetensors), and turns PyTorch's generic
failures into a :class:`CheckpointError` that names the file and says what to do
(re-download, use an earlier checkpoint, or refuse an unsafe file).
:func:`load_url_safely` downloads into the torch hub cache and loads the file
the same way (MMEngine's ``load_from_http`` unpickles downloads fully).

This is plain library code. Importing :mod:`mmsape.engine` registers it with
MMEngine's ``CheckpointLoader`` so that ``load_from``, ``resume`` and
``init_cfg`` checkpoints go through it too.
"""
import os
import os.path as osp
import pickle
import re
import sys
import zipfile
from typing import Any, Callable, Optional, Tuple, Union
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info

from .safe_globals import allow_mmengine_checkpoint_types

__all__ = [
    'CheckpointError', 'CorruptCheckpointError', 'UnsafeCheckpointError',
    'load_checkpoint_safely', 'load_url_safely', 'hub_cache_path'
]

PathType = Union[str, 'os.PathLike[str]']
MapLocation = Union[None, str, torch.device, dict, Callable]


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be loaded."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint file is truncated, corrupt or not a checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint contains objects that are not plain data/weights."""



# Phrases PyTorch uses when the weights-only unpickler refuses an object (as
# opposed to failing on malformed bytes).
_REFUSAL_PATTERNS = (
    re.compile(r'GLOBAL ([\w.]+)'),
    re.compile(r'reduce for unrecognized function (.+?)(?: which belongs|\n|$)'),
    re.compile(r'(?:Can only build|Can only create new object).*but got (.+?)(?:\n|$)'),
    # mmsape's restricted stand-ins (see safe_globals).
    re.compile(r'Refused (builtins\.\w+)\('),
)

# Phrases PyTorch uses for unreadable archives / pickles.
_CORRUPTION_PHRASES = (
    'corrupt', 'unexpected eof', 'pytorchstreamreader', 'central directory',
    'zip archive', 'invalid header', 'ran out of input', 'unsupported operand',
    'invalid load key', 'magic number')


def _corrupt_error(path: str, reason: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f'Checkpoint file {path!r} is truncated or corrupt ({reason}). It was '
        'probably not fully written or downloaded: re-download it, or resume '
        'from an earlier checkpoint.')


def _unsafe_error(path: str, offending: Optional[str]) -> UnsafeCheckpointError:
    what = f' (offending global: {offending})' if offending else ''
    return UnsafeCheckpointError(
        f'Checkpoint file {path!r} contains objects that are not plain weights'
        f'{what} and was refused for safety; nothing in it was executed. Only '
        'load it with weights_only=False or extend the allowlist '
        '(torch.serialization.add_safe_globals) if you fully trust its origin.')


def _refused_global(message: str) -> Tuple[bool, Optional[str]]:
    """Whether a weights-only error is a refusal, and of which global."""
    for pattern in _REFUSAL_PATTERNS:
        match = pattern.search(message)
        if match:
            return True, match.group(1).strip()
    return False, None


def _check_zip_is_complete(path: str) -> None:
    """Detect a truncated zip-format checkpoint before handing it to torch.

    A file cut short loses the zip central directory, for which PyTorch only
    raises ``OSError: [Errno 22] Invalid argument``.
    """
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head:
        raise _corrupt_error(path, 'the file is empty')
    if head == b'PK\x03\x04' and not zipfile.is_zipfile(path):
        raise _corrupt_error(path, 'the zip archive has no central directory')


def _load_safetensors(path: str, map_location: MapLocation) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - safetensors ships with timm
        raise ImportError(
            f'Loading {path!r} requires the safetensors package: '
            'pip install safetensors') from e
    if map_location is None:
        device = 'cpu'
    elif isinstance(map_location, (str, torch.device)):
        device = str(map_location)
    else:
        raise TypeError('map_location for .safetensors files must be None, a '
                        f'str or a torch.device, got {type(map_location)}')
    try:
        return load_file(path, device=device)
    except Exception as e:  # SafetensorError is not exported as a stable type
        raise _corrupt_error(path, f'{type(e).__name__}: {e}') from e


def load_checkpoint_safely(path: PathType, map_location: MapLocation = 'cpu') -> Any:
    """Load a checkpoint without ever executing code stored in it.

    ``.pth``-style files are read with ``torch.load(weights_only=True)`` after
    :func:`allow_mmengine_checkpoint_types`; ``.safetensors`` files with
    :func:`safetensors.torch.load_file` (a pure tensor format).

    Args:
        path (str | os.PathLike): Local checkpoint path.
        map_location (str | torch.device | dict | Callable, optional): Same as
            :func:`torch.load`. ``.safetensors`` accepts ``None``, a str or a
            ``torch.device``. Defaults to ``'cpu'``.

    Returns:
        Any: The loaded object, usually a dict.

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        CorruptCheckpointError: The file is truncated or corrupt.
        UnsafeCheckpointError: The file contains non-data objects (e.g. a
            pickled ``os.system`` call); it is refused, never executed.
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Checkpoint file not found: {path!r}')
    if path.endswith('.safetensors'):
        return _load_safetensors(path, map_location)

    _check_zip_is_complete(path)
    allow_mmengine_checkpoint_types()
    try:
        # weights_only=True explicitly, so neither an old torch default nor
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD can turn this into a full unpickle.
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused, offending = _refused_global(str(e))
        if refused:
            # ``from None``: torch's message suggests weights_only=False,
            # which is exactly the wrong advice for an unknown file.
            raise _unsafe_error(path, offending) from None
        raise _corrupt_error(path, 'not a valid pickle stream') from e
    except EOFError as e:
        raise _corrupt_error(path, 'unexpected end of file') from e
    except (RuntimeError, OSError) as e:
        message = str(e).lower()
        is_io_error = isinstance(e, OSError) and not isinstance(
            e, (PermissionError, IsADirectoryError, FileNotFoundError))
        if is_io_error or any(p in message for p in _CORRUPTION_PHRASES):
            raise _corrupt_error(path, f'{type(e).__name__}: {e}') from e
        raise  # e.g. map_location errors: not the file's fault


def hub_cache_path(url: str, model_dir: Optional[str] = None) -> str:
    """Where :func:`load_url_safely` keeps the download of ``url``.

    Same cache layout as MMEngine's ``load_url`` / ``torch.hub.load_state_dict_from_url``
    (the file name is the URL's last path component), so files MMEngine already
    downloaded are reused, and a file copied there is never downloaded (how an
    offline machine uses a config that names a URL).

    Args:
        url (str): The checkpoint's URL.
        model_dir (str, optional): The cache folder. Defaults to
            ``<torch.hub.get_dir()>/checkpoints`` (``$TORCH_HOME/hub/checkpoints``).

    Returns:
        str: The cached file's path (which may not exist yet).
    """
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    filename = osp.basename(urlparse(url).path)
    if not filename:
        raise ValueError(f'Cannot tell a checkpoint file name from the URL {url!r}; it '
                         'should end with the file name, e.g. https://host/model.pth.')
    return osp.join(model_dir, filename)


def _download_to_hub_cache(url: str, model_dir: Optional[str], progress: bool) -> str:
    """Download ``url`` once into :func:`hub_cache_path`.

    ``torch.hub.download_url_to_file`` writes to a temporary file and renames it,
    so an interrupted download leaves no partial file.
    """
    cached_file = hub_cache_path(url, model_dir)
    os.makedirs(osp.dirname(cached_file), exist_ok=True)
    if not osp.exists(cached_file):
        sys.stderr.write(f'Downloading: "{url}" to {cached_file}\n')
        torch.hub.download_url_to_file(url, cached_file, None, progress=progress)
    return cached_file


def _unpack_legacy_zip(cached_file: str) -> str:
    """Path of the checkpoint inside a legacy one-file zip (old torchvision
    releases), extracted next to it; ``cached_file`` itself otherwise."""
    if not zipfile.is_zipfile(cached_file):
        return cached_file
    with zipfile.ZipFile(cached_file) as archive:
        members = archive.infolist()
        # torch.save's own zip format always holds several entries.
        if len(members) != 1 or members[0].is_dir():
            return cached_file
        directory = osp.dirname(cached_file)
        extracted = osp.realpath(osp.join(directory, members[0].filename))
        if osp.dirname(extracted) != osp.realpath(directory):
            raise _corrupt_error(cached_file, f'the zip member {members[0].filename!r} '
                                 'would be extracted outside the cache directory')
        archive.extract(members[0], directory)
    return extracted


def load_url_safely(url: str,
                    map_location: MapLocation = None,
                    model_dir: Optional[str] = None,
                    progress: bool = os.isatty(0)) -> Any:
    """Download a checkpoint once and load it with :func:`load_checkpoint_safely`.

    MMEngine's ``load_from_http`` hands the download to
    ``torch.hub.load_state_dict_from_url``, which unpickles it with
    ``weights_only=False``: a file from the internet could run any code. This
    downloads the file (rank 0 first, then the other ranks reuse the cache, as
    MMEngine does) and loads it without executing anything.

    Args:
        url (str): The URL.
        map_location (str | torch.device | dict | Callable, optional): Same
            as :func:`torch.load`. Defaults to None.
        model_dir (str, optional): Download directory. Defaults to
            ``<torch.hub.get_dir()>/checkpoints``.
        progress (bool): Show a download progress bar. Defaults to whether
            stdin is a terminal (as MMEngine).

    Returns:
        Any: The loaded checkpoint.

    Raises:
        UnsafeCheckpointError: The download holds non-data objects.
        CorruptCheckpointError: The cached download is not a valid checkpoint.
    """
    rank, world_size = get_dist_info()
    if rank == 0:
        cached_file = _download_to_hub_cache(url, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            cached_file = _download_to_hub_cache(url, model_dir, progress)
    try:
        return load_checkpoint_safely(_unpack_legacy_zip(cached_file),
                                      map_location=map_location)
    except CheckpointError as error:
        hint = (' Delete the cached file to download it again.'
                if isinstance(error, CorruptCheckpointError) else '')
        raise type(error)(f'{error} (downloaded from {url}).{hint}') from None
