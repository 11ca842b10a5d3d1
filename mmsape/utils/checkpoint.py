# Copyright (c) OpenMMLab. All rights reserved.
"""Safe and crash-tolerant checkpoint I/O for MMEngine-based training.

Why this module exists
----------------------
1. **Safe loading.** PyTorch >= 2.6 changed the default of ``torch.load`` to
   ``weights_only=True``. MMEngine 0.10.7 calls ``torch.load`` without that
   argument, so resuming a full Runner checkpoint now fails: besides tensors
   it contains the message hub state (:class:`mmengine.logging.HistoryBuffer`
   objects, numpy arrays and scalars, ``dataset_meta``). Passing
   ``weights_only=False`` would "fix" that by letting any checkpoint run
   arbitrary code while it is unpickled, which is unacceptable for files
   downloaded from the internet. Instead we keep ``weights_only=True`` and
   allowlist exactly the data types MMEngine's own checkpoints need (see
   :func:`mmengine_checkpoint_safe_globals`); anything else is still refused.

2. **Atomic saving.** MMEngine writes checkpoints in place, so a process
   killed while writing (OOM killer, pre-emption, Ctrl-C) leaves a truncated
   ``iter_N.pth`` behind and ``last_checkpoint`` points at it.
   :func:`atomic_save` writes to a temporary file in the same directory,
   fsyncs it and then ``os.replace``-s it onto the target, so the target
   path always holds either the complete old or the complete new file.

3. **Clear errors.** :func:`load_checkpoint_safely` turns PyTorch's generic
   failures into a :class:`CheckpointError` that names the file and says what
   to do (re-download, use an earlier checkpoint, or refuse an unsafe file).

Usage::

    from mmsape.utils import patch_mmengine_checkpointing
    patch_mmengine_checkpointing()  # once, before building the Runner

After the patch, ``Runner.save_checkpoint`` (and ``CheckpointHook``) write
local checkpoints atomically, and every local-path load made by MMEngine
(``Runner.load_checkpoint``, ``resume``, ``load_from``,
:func:`mmengine.runner.load_checkpoint`) goes through
:func:`load_checkpoint_safely`. So do ``http(s)://`` URLs (and the
``torchvision://``, ``open-mmlab://``, ``mmcls://`` names that resolve to
them): MMEngine's ``load_from_http`` unpickles the download without
``weights_only``; :func:`load_from_http_safely` downloads into the torch hub
cache and loads the file like a local one. Other backends (``pavi://``,
``s3://`` ...) are left exactly as MMEngine implements them.

Requires torch >= 2.6 (``torch.serialization.add_safe_globals`` with
``(object, "module.name")`` tuples).
"""
import os
import os.path as osp
import pickle
import re
import sys
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Callable, List, Optional, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.logging import HistoryBuffer

__all__ = [
    'CheckpointError', 'CorruptCheckpointError', 'UnsafeCheckpointError',
    'mmengine_checkpoint_safe_globals', 'allow_mmengine_checkpoint_types',
    'load_checkpoint_safely', 'atomic_save', 'save_checkpoint_atomically',
    'load_from_local_safely', 'load_from_http_safely', 'patch_mmengine_checkpointing',
    'format_state_dict_report'
]

PathType = Union[str, 'os.PathLike[str]']
MapLocation = Union[None, str, torch.device, dict, Callable]
Shape = Sequence[int]

# The only statistics methods MMEngine pickles by reference. ``HistoryBuffer``
# stores them in its state, and pickle protocol 2 serialises a method as
# ``builtins.getattr(HistoryBuffer, '<name>')``.
_HISTORY_BUFFER_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})

# Modules that bind ``save_checkpoint`` as a module-level name (either by
# defining it or by ``from .checkpoint import save_checkpoint``). Patching only
# ``mmengine.runner.checkpoint`` would miss the Runner's own reference.
_MODULES_BINDING_SAVE_CHECKPOINT = (
    'mmengine.runner.checkpoint',
    'mmengine.runner',
    'mmengine.runner.runner',
    'mmengine._strategy.deepspeed',
    'mmengine._strategy.colossalai',
)

# MMEngine's ``save_checkpoint`` as found when the patch was first applied;
# used for the non-local backends we deliberately do not touch.
_mmengine_save_checkpoint: Optional[Callable] = None


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be loaded."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint file is truncated, corrupt or not a checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint contains objects that are not plain data/weights."""


# ---------------------------------------------------------------------------
# Allowlist for ``torch.load(weights_only=True)``
# ---------------------------------------------------------------------------
def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """A ``builtins.getattr`` stand-in that only resolves what MMEngine needs.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle
    as ``getattr(HistoryBuffer, 'mean')`` etc. Allowlisting the real
    ``getattr`` would let a crafted file reach arbitrary attributes of every
    other allowlisted object, so this function is registered under the name
    ``builtins.getattr`` instead and refuses everything else.

    Args:
        obj (Any): The object whose attribute is requested.
        name (str): The attribute name.

    Returns:
        Any: ``getattr(HistoryBuffer, name)`` for the four statistics methods.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    # Torch only turns ``UnpicklingError`` into its "weights only" error, so
    # raise that type to be reported (and classified) like any refused global.
    raise pickle.UnpicklingError(
        f'Refused builtins.getattr({obj!r}, {name!r}): only the statistics '
        f'methods {sorted(_HISTORY_BUFFER_STATISTICS)} of '
        'mmengine.logging.HistoryBuffer may be resolved from a checkpoint.')


def _numpy_multiarray_module() -> Any:
    """Return numpy's C ``multiarray`` module without deprecation warnings."""
    try:  # numpy >= 1.26 (and 2.x, where ``numpy.core`` is deprecated)
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - old numpy
        from numpy.core import multiarray
    return multiarray


def _numpy_dtype_classes() -> list:
    """The concrete dtype classes whose instances a checkpoint may rebuild.

    ``ObjectDType`` is excluded on purpose: object arrays hold arbitrary Python
    objects, which model/training-state checkpoints never need.
    """
    try:
        import numpy.dtypes as numpy_dtypes  # numpy >= 1.25
    except ImportError:  # pragma: no cover - old numpy: one dtype class
        return []
    classes = []
    for name in sorted(dir(numpy_dtypes)):
        cls = getattr(numpy_dtypes, name)
        if (isinstance(cls, type) and issubclass(cls, np.dtype)
                and cls is not numpy_dtypes.ObjectDType):
            classes.append(cls)
    return classes


@lru_cache(maxsize=None)
def mmengine_checkpoint_safe_globals() -> tuple:
    """The globals a full MMEngine Runner checkpoint needs, and nothing else.

    Found empirically by saving a Runner checkpoint (model, SGD optimizer with
    momentum, param scheduler, message hub, ``dataset_meta`` with numpy
    arrays) and loading it with ``weights_only=True``. Everything else a
    Runner saves (dicts, lists, tuples, ``OrderedDict``, ``Counter``,
    tensors, ``torch.Size``) is already allowed by PyTorch.

    Each entry is either an object (registered under its own
    ``module.qualname``) or an ``(object, 'module.name')`` tuple that maps the
    name written in the pickle to the object used when loading.

    Returns:
        tuple: Entries for :func:`torch.serialization.add_safe_globals`.
    """
    multiarray = _numpy_multiarray_module()
    safe_globals: list = [
        # Plain log container; its state is numpy arrays, an int and the
        # statistics-method table (restricted below).
        HistoryBuffer,
        # Restricted stand-in for the ``getattr`` calls in HistoryBuffer state.
        (_history_buffer_getattr, 'builtins.getattr'),
        # numpy arrays: ``_reconstruct`` only allocates an empty ndarray (it
        # rejects non-ndarray classes), the data comes from ``ndarray``'s
        # ``__setstate__``, and object arrays are impossible because
        # ``ObjectDType`` is not allowlisted.
        np.ndarray,
        (multiarray._reconstruct, 'numpy._core.multiarray._reconstruct'),
        # numpy < 2 wrote the same function under its old module path.
        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
        # numpy scalars (e.g. ``np.float64`` ETA in the message hub): builds
        # a scalar from a dtype and raw bytes.
        (multiarray.scalar, 'numpy._core.multiarray.scalar'),
        (multiarray.scalar, 'numpy.core.multiarray.scalar'),
        # dtype descriptors: ``np.dtype('<f8', ...)`` plus the concrete
        # classes whose ``__setstate__`` the unpickler invokes.
        np.dtype,
    ]
    safe_globals.extend(_numpy_dtype_classes())
    return tuple(safe_globals)


def allow_mmengine_checkpoint_types() -> None:
    """Allowlist the types of MMEngine checkpoints for ``weights_only`` loads.

    Idempotent: PyTorch keeps the allowlist as a set, so calling this again
    (e.g. before every load, or after a test cleared the list) is harmless.
    The registration is process-wide, which also fixes MMEngine code paths
    that call ``torch.load`` themselves.
    """
    if not hasattr(torch.serialization, 'add_safe_globals'):
        raise RuntimeError(
            'Loading MMEngine checkpoints safely requires torch >= 2.6 '
            f'(torch.serialization.add_safe_globals); found {torch.__version__}.')
    torch.serialization.add_safe_globals(list(mmengine_checkpoint_safe_globals()))


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
# Phrases PyTorch uses when the weights-only unpickler refuses an object (as
# opposed to failing on malformed bytes).
_REFUSAL_PATTERNS = (
    re.compile(r'GLOBAL ([\w.]+)'),
    re.compile(r'reduce for unrecognized function (.+?)(?: which belongs|\n|$)'),
    re.compile(r'(?:Can only build|Can only create new object).*but got (.+?)(?:\n|$)'),
    re.compile(r'Refused (builtins\.getattr)\('),
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


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------
def _fsync_directory(directory: str) -> None:
    """Persist a rename; directories cannot be opened for fsync on Windows."""
    if os.name == 'nt':  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: PathType) -> None:
    """``torch.save`` that never leaves a partially written file at ``path``.

    The object is written to a hidden temporary file in the same directory
    (``os.replace`` is only atomic within one filesystem), flushed and
    fsynced, and then renamed onto ``path``. If the process dies before the
    rename, ``path`` still holds the previous complete file; on an exception
    the temporary file is removed. (A SIGKILL can leave a stale
    ``.<name>.<hex>.tmp`` file, never a broken ``path``.)

    Args:
        obj (Any): Object to serialise with :func:`torch.save`.
        path (str | os.PathLike): Destination file; parent directories are
            created like MMEngine's ``LocalBackend.put`` does.
    """
    path = os.fspath(path)
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = osp.join(directory, f'.{osp.basename(path)}.{uuid.uuid4().hex}.tmp')
    # O_EXCL: never clobber another writer's temp file. Mode 0o666 lets the
    # umask decide permissions, matching what a plain ``open(path, 'wb')`` gives.
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename publishes it
        os.replace(tmp_path, path)
    except BaseException:  # also KeyboardInterrupt: do not leave temp files
        try:
            os.remove(tmp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _is_local_target(filename: str, backend_args: Optional[dict]) -> bool:
    """Whether MMEngine would write ``filename`` with its ``LocalBackend``."""
    from mmengine.fileio import LocalBackend, get_file_backend
    if filename.startswith('pavi://'):
        return False
    try:
        backend = get_file_backend(filename, backend_args=backend_args)
    except Exception:  # e.g. missing petrel_client: MMEngine reports it
        return False
    return isinstance(backend, LocalBackend)


def save_checkpoint_atomically(checkpoint: dict,
                               filename: str,
                               file_client_args: Optional[dict] = None,
                               backend_args: Optional[dict] = None) -> None:
    """Drop-in for :func:`mmengine.runner.checkpoint.save_checkpoint`.

    Local paths are written with :func:`atomic_save`; everything else (pavi,
    Petrel/S3 and other backends, or the deprecated ``file_client_args``) is
    delegated unchanged to MMEngine's implementation. The checkpoint dict is
    serialised as given: callers (``Runner.save_checkpoint``) already applied
    ``weights_to_cpu`` to ``get_state_dict`` output, and ``torch.save`` keeps
    the state dict's ``_metadata`` that ``load_state_dict`` relies on.

    Args:
        checkpoint (dict): Checkpoint to save.
        filename (str): Destination path or URI.
        file_client_args (dict, optional): Deprecated MMEngine argument;
            forces the original code path. Defaults to None.
        backend_args (dict, optional): MMEngine file backend arguments.
            Defaults to None.
    """
    filename = os.fspath(filename)
    if file_client_args is None and _is_local_target(filename, backend_args):
        atomic_save(checkpoint, filename)
        return
    original = _mmengine_save_checkpoint
    if original is None:
        from mmengine.runner import checkpoint as mmengine_checkpoint
        original = mmengine_checkpoint.save_checkpoint
    original(checkpoint, filename, file_client_args=file_client_args,
             backend_args=backend_args)


def load_from_local_safely(filename: str, map_location: MapLocation = None) -> Any:
    """Drop-in for MMEngine's ``load_from_local`` checkpoint scheme.

    The name must start with ``load_from_``: ``CheckpointLoader`` logs
    ``loader.__name__[10:]`` as the backend name.

    Args:
        filename (str): Local checkpoint path (``~`` is expanded).
        map_location (str | torch.device | dict | Callable, optional): Same
            as :func:`torch.load`. Defaults to None.

    Returns:
        Any: The loaded checkpoint.
    """
    return load_checkpoint_safely(osp.expanduser(filename), map_location=map_location)


def _download_to_hub_cache(url: str, model_dir: Optional[str], progress: bool) -> str:
    """Download ``url`` once into ``model_dir`` (``<torch hub dir>/checkpoints``).

    Same cache layout as MMEngine's ``load_url`` / ``torch.hub.load_state_dict_from_url``
    (the file name is the URL's last path component), so files MMEngine already
    downloaded are reused. ``torch.hub.download_url_to_file`` writes to a temporary
    file and renames it, so an interrupted download leaves no partial file.
    """
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    filename = osp.basename(urlparse(url).path)
    if not filename:
        raise ValueError(f'Cannot tell a checkpoint file name from the URL {url!r}; it '
                         'should end with the file name, e.g. https://host/model.pth.')
    cached_file = osp.join(model_dir, filename)
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


def load_from_http_safely(filename: str,
                          map_location: MapLocation = None,
                          model_dir: Optional[str] = None,
                          progress: bool = os.isatty(0)) -> Any:
    """Drop-in for MMEngine's ``http://`` / ``https://`` checkpoint scheme.

    MMEngine's ``load_from_http`` hands the download to
    ``torch.hub.load_state_dict_from_url``, which unpickles it with
    ``weights_only=False``: a file from the internet could run any code. This
    downloads the file (rank 0 first, then the other ranks reuse the cache, as
    MMEngine does) and loads it with :func:`load_checkpoint_safely`.

    Args:
        filename (str): The URL.
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
        cached_file = _download_to_hub_cache(filename, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            cached_file = _download_to_hub_cache(filename, model_dir, progress)
    try:
        return load_checkpoint_safely(_unpack_legacy_zip(cached_file),
                                      map_location=map_location)
    except CheckpointError as error:
        hint = (' Delete the cached file to download it again.'
                if isinstance(error, CorruptCheckpointError) else '')
        raise type(error)(f'{error} (downloaded from {filename}).{hint}') from None


def patch_mmengine_checkpointing() -> None:
    """Make MMEngine save atomically and load safely. Idempotent.

    * Every module-level ``save_checkpoint`` binding listed in
      ``_MODULES_BINDING_SAVE_CHECKPOINT`` (the Runner imported its own copy)
      is replaced by :func:`save_checkpoint_atomically`, so a crash mid-save
      cannot leave a truncated checkpoint that ``resume`` would then pick.
    * The local (``''``) scheme of ``CheckpointLoader`` and
      ``mmengine.runner.checkpoint.load_from_local`` are replaced by
      :func:`load_from_local_safely`: MMEngine calls ``torch.load`` without
      ``weights_only``, which on torch >= 2.6 means ``True`` without the
      allowlist MMEngine's own checkpoints need.
    * The ``http://`` / ``https://`` scheme and
      ``mmengine.runner.checkpoint.load_from_http`` (which the
      ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` loaders call) are
      replaced by :func:`load_from_http_safely`: MMEngine fully unpickles
      downloads.
    """
    global _mmengine_save_checkpoint
    import mmengine.runner  # noqa: F401  (binds the modules patched below)
    from mmengine.runner import checkpoint as mmengine_checkpoint

    current = mmengine_checkpoint.save_checkpoint
    if current is not save_checkpoint_atomically:
        _mmengine_save_checkpoint = current
    for module_name in _MODULES_BINDING_SAVE_CHECKPOINT:
        module = sys.modules.get(module_name)
        # Only replace MMEngine's function: never clobber an unrelated name.
        if module is not None and getattr(module, 'save_checkpoint',
                                          None) is _mmengine_save_checkpoint:
            module.save_checkpoint = save_checkpoint_atomically

    mmengine_checkpoint.load_from_local = load_from_local_safely
    mmengine_checkpoint.CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_safely, force=True)
    mmengine_checkpoint.load_from_http = load_from_http_safely
    mmengine_checkpoint.CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http_safely, force=True)
    allow_mmengine_checkpoint_types()


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------
def _format_shape(shape: Shape) -> str:
    return '(' + ', '.join(str(int(d)) for d in shape) + (',)' if len(shape) == 1 else ')')


def _rows_for(keys: Union[Iterable[str], Mapping[str, Shape]], status: str,
              shape_owner: str, absent_from: str) -> List[Tuple[str, str, str]]:
    if isinstance(keys, Mapping):
        return [(key, status, f'{shape_owner} {_format_shape(shape)}')
                for key, shape in sorted(keys.items())]
    return [(key, status, f'absent from {absent_from}') for key in sorted(keys)]


def format_state_dict_report(
    missing: Union[Iterable[str], Mapping[str, Shape]],
    unexpected: Union[Iterable[str], Mapping[str, Shape]],
    resized: Union[Mapping[str, Tuple[Shape, Shape]], Iterable[Tuple[str, Shape, Shape]]],
) -> str:
    """Render a state-dict mismatch summary as one aligned table.

    Rows are grouped by status (missing, unexpected, resized) and sorted by
    key within each group.

    Args:
        missing (Iterable[str] | Mapping[str, Sequence[int]]): Model keys
            absent from the checkpoint, optionally mapped to the model shape.
        unexpected (Iterable[str] | Mapping[str, Sequence[int]]): Checkpoint
            keys absent from the model, optionally mapped to their shape.
        resized (Mapping[str, tuple] | Iterable[tuple]): Keys whose shapes
            differ, as ``{key: (checkpoint_shape, model_shape)}`` or
            ``(key, checkpoint_shape, model_shape)`` triples.

    Returns:
        str: The table (no trailing newline), or a one-line message if all
        keys matched.

    Example:
        >>> print(format_state_dict_report(['head.bias'], {'fc.w': (2, 3)},
        ...                                {'stem.w': ((8, 3), (16, 3))}))
        key       | status     | detail
        ----------+------------+----------------------------------
        head.bias | missing    | absent from checkpoint
        fc.w      | unexpected | checkpoint (2, 3)
        stem.w    | resized    | checkpoint (8, 3) -> model (16, 3)
    """
    if isinstance(resized, Mapping):
        resized_items = sorted((k, v[0], v[1]) for k, v in resized.items())
    else:
        resized_items = sorted(resized)
    rows = (
        _rows_for(missing, 'missing', 'model', 'checkpoint') +
        _rows_for(unexpected, 'unexpected', 'checkpoint', 'model') + [
            (key, 'resized', f'checkpoint {_format_shape(ckpt_shape)} -> '
             f'model {_format_shape(model_shape)}')
            for key, ckpt_shape, model_shape in resized_items
        ])
    if not rows:
        return 'State dict matches: no missing, unexpected or resized keys.'

    header = ('key', 'status', 'detail')
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]

    def render(cells: Sequence[str]) -> str:
        # The last column is not padded, so lines carry no trailing spaces.
        return ' | '.join([cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2]])

    separator = '-+-'.join('-' * width for width in widths)
    return '\n'.join([render(header), separator, *(render(row) for row in rows)])
