# Copyright (c) OpenMMLab. All rights reserved.
"""Writes that never leave a partially written file behind.

MMEngine writes checkpoints in place, so a process killed while writing (OOM
killer, pre-emption, Ctrl-C) leaves a truncated ``iter_N.pth`` behind. Here the
data goes to a temporary file in the same directory, is flushed and fsynced, and
is then ``os.replace``-d onto the target, so the target path always holds either
the complete old or the complete new file.

This is plain library code. Importing :mod:`mmsape.engine` registers a file
backend built on it for local paths, so MMEngine's ``save_checkpoint`` (and
every other ``mmengine.fileio`` write) becomes atomic.
"""
import contextlib
import os
import os.path as osp
import uuid
from typing import Any, BinaryIO, Iterator, Union

import torch

__all__ = ['atomic_writer', 'atomic_write', 'atomic_save']

PathType = Union[str, 'os.PathLike[str]']


def _fsync_directory(directory: str) -> None:
    """Persist a rename; directories cannot be opened for fsync on Windows."""
    if os.name == 'nt':  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: PathType) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, published only when complete.

    Yields a hidden temporary file in the same directory as ``path``
    (``os.replace`` is only atomic within one filesystem). When the block ends
    normally the file is flushed, fsynced and renamed onto ``path``; if it
    raises (also ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` keeps its previous content. A SIGKILL can leave a stale
    ``.<name>.<hex>.tmp`` file, never a broken ``path``.

    Args:
        path (str | os.PathLike): Destination file; parent directories are
            created like MMEngine's ``LocalBackend.put`` does.

    Yields:
        BinaryIO: The temporary file, open for writing.

    Example:
        >>> import tempfile, os.path as osp
        >>> path = osp.join(tempfile.mkdtemp(), 'run', 'notes.txt')
        >>> with atomic_writer(path) as f:
        ...     _ = f.write(b'complete')
        >>> open(path, 'rb').read()
        b'complete'
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
            yield f
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


def atomic_write(data: bytes, path: PathType) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`.

    Args:
        data (bytes): The file's new content.
        path (str | os.PathLike): Destination file.
    """
    with atomic_writer(path) as f:
        f.write(data)


def atomic_save(obj: Any, path: PathType) -> None:
    """``torch.save`` that never leaves a partially written file at ``path``.

    Args:
        obj (Any): Object to serialise with :func:`torch.save`.
        path (str | os.PathLike): Destination file (see :func:`atomic_writer`).
    """
    with atomic_writer(path) as f:
        torch.save(obj, f)
