"""Atomic writes for every local path MMEngine writes through its file backends.

MMEngine's ``save_checkpoint`` serialises the checkpoint and hands the bytes to
``get_file_backend(filename).put``; for local paths that is ``LocalBackend``,
which opens the target with ``'wb'`` and writes in place, so a run killed
mid-save leaves a truncated checkpoint. Importing this module registers
:class:`AtomicLocalBackend` as MMEngine's ``'local'`` backend (name and the
empty prefix of plain paths), so those writes go through a temporary file,
fsync and ``os.replace`` instead.
"""
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio import io as mmengine_fileio_io

from mmsape.utils import atomic_write

__all__ = ['AtomicLocalBackend', 'drop_cached_plain_local_backends']


# force=True: replaces MMEngine's own registration of LocalBackend.
@register_backend('local', force=True, prefixes='')
class AtomicLocalBackend(LocalBackend):
    """MMEngine's ``LocalBackend`` whose writes never leave a partial file.

    ``put`` and ``put_text`` write a hidden temporary file next to the target,
    fsync it and rename it onto the target (:func:`mmsape.utils.atomic_write`):
    the target always holds the complete old or the complete new content.
    Reading, listing and removing are ``LocalBackend``'s.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        """Write bytes to ``filepath`` atomically, creating its directory."""
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically, creating its directory."""
        atomic_write(obj.encode(encoding), filepath)


def drop_cached_plain_local_backends() -> None:
    """Forget ``LocalBackend`` instances MMEngine cached before the registration.

    ``get_file_backend(..., enable_singleton=True)`` (used by ``mmengine.fileio.put``
    and friends) keeps the instances it built in ``mmengine.fileio.io.backend_instances``;
    one built before this module was imported would keep writing in place.
    Dropping it makes the next call build an :class:`AtomicLocalBackend`.
    ``save_checkpoint`` itself builds a new backend on every call.
    """
    cache = mmengine_fileio_io.backend_instances
    for key, backend in list(cache.items()):
        if type(backend) is LocalBackend:
            del cache[key]


drop_cached_plain_local_backends()
