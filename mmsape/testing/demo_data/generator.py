"""The demo data folder: generation, its manifest, and up-to-date checks."""
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional, Union

from .writers import (
    COCO_VAL_ID_OFFSET,
    GENERATOR_VERSION,
    write_ade,
    write_coco,
    write_imagenet,
    write_json,
)

MANIFEST_NAME = 'demo_data_manifest.json'
DEFAULT_NUM_TRAIN = 48
DEFAULT_NUM_VAL = 16
# Entries of <out>/ the generator owns; nothing else there is touched.
_OWNED_ENTRIES = ('imagenet', 'coco', 'ade', MANIFEST_NAME)


def _expected_manifest(seed: int, num_train: int, num_val: int) -> dict:
    return dict(generator='mmsape.testing.demo_data', version=GENERATOR_VERSION,
                seed=seed, num_train=num_train, num_val=num_val)


def read_demo_manifest(root: Union[str, Path]) -> Optional[dict]:
    """The manifest of demo data under ``root``, or None if absent or unreadable.

    Args:
        root (str | Path): Output directory of :func:`generate_demo_data`.

    Returns:
        dict, optional: Generator version, seed, counts and per-task statistics;
        ``complete`` is False while (or if interrupted during) generation.
    """
    try:
        manifest = json.loads((Path(root) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_demo_data_current(root: Union[str, Path], seed: int = 0,
                         num_train: int = DEFAULT_NUM_TRAIN,
                         num_val: int = DEFAULT_NUM_VAL) -> bool:
    """Whether ``root`` holds complete demo data of this generator version and settings.

    Args:
        root (str | Path): Output directory of :func:`generate_demo_data`.
        seed (int): Expected seed.
        num_train (int): Expected training images per task.
        num_val (int): Expected validation images per task.

    Returns:
        bool: True when no regeneration is needed.
    """
    manifest = read_demo_manifest(root)
    if manifest is None or not manifest.get('complete', False):
        return False
    expected = _expected_manifest(seed, num_train, num_val)
    return all(manifest.get(key) == value for key, value in expected.items())


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Serialise generators writing to ``root`` (e.g. parallel pytest workers)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent runs are the user's call
        yield
        return
    with open(root / '.demo_data.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _generate(root: Path, seed: int, num_train: int, num_val: int, force: bool) -> Path:
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be positive, '
                         f'got {num_train} and {num_val}')
    if num_train >= COCO_VAL_ID_OFFSET:
        raise ValueError(f'num_train must stay below {COCO_VAL_ID_OFFSET}')
    present = [name for name in _OWNED_ENTRIES if (root / name).exists()]
    # Empty directories (say, made by hand beforehand) hold nothing to protect.
    with_data = [name for name in present
                 if not (root / name).is_dir() or any((root / name).iterdir())]
    if with_data and read_demo_manifest(root) is None and not force:
        # Someone else's data (say a real COCO under <out>/coco): never delete it.
        raise FileExistsError(
            f'{root} holds {with_data} but no {MANIFEST_NAME}; refusing to overwrite data '
            'this generator did not write (use force=True / --force to replace it)')
    for name in present:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    manifest = _expected_manifest(seed, num_train, num_val)
    # Written first as incomplete, so an interrupted run is regenerated next time
    # instead of being mistaken for someone else's data.
    write_json(dict(manifest, complete=False), root / MANIFEST_NAME)
    counts = {'train': num_train, 'val': num_val}
    tasks = dict(imagenet=write_imagenet(root / 'imagenet', seed, counts),
                 coco=write_coco(root / 'coco', seed, counts),
                 ade=write_ade(root / 'ade', seed, counts))
    tmp = root / (MANIFEST_NAME + '.tmp')
    write_json(dict(manifest, complete=True, tasks=tasks), tmp)
    os.replace(tmp, root / MANIFEST_NAME)
    return root


def generate_demo_data(out_dir: Union[str, Path], seed: int = 0,
                       num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
                       force: bool = False) -> Path:
    """(Re)generate the three demo datasets under ``out_dir``.

    Replaces earlier demo data there (recognised by its manifest). Other
    entries of ``out_dir`` are left alone.

    Args:
        out_dir (str | Path): Output directory, created if missing.
        seed (int): Seed; the same seed gives byte-identical files.
        num_train (int): Training images per task.
        num_val (int): Validation images per task.
        force (bool): Also replace ``imagenet/``, ``coco/`` and ``ade/`` when no
            manifest shows that this generator wrote them. Defaults to False.

    Returns:
        Path: ``out_dir``.
    """
    root = Path(out_dir)
    with _exclusive(root):
        return _generate(root, seed, num_train, num_val, force)


def ensure_demo_data(root: Union[str, Path], seed: int = 0,
                     num_train: int = DEFAULT_NUM_TRAIN,
                     num_val: int = DEFAULT_NUM_VAL) -> Path:
    """Generate the demo datasets under ``root`` unless up to date already.

    Regenerates when the manifest is missing, incomplete, or records another
    generator version, seed or count.

    Args:
        root (str | Path): Output directory (e.g. ``data/demo``).
        seed (int): Seed.
        num_train (int): Training images per task.
        num_val (int): Validation images per task.

    Returns:
        Path: ``root``.
    """
    root = Path(root)
    if is_demo_data_current(root, seed, num_train, num_val):
        return root
    with _exclusive(root):
        # Another process may have generated it while this one waited for the lock.
        if not is_demo_data_current(root, seed, num_train, num_val):
            _generate(root, seed, num_train, num_val, force=False)
    return root
