"""The demo data folder: generation, its manifest, and up-to-date checks."""
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterator, Optional, Union

from .writers import (
    COCO_VAL_ID_OFFSET,
    GENERATOR_VERSION,
    write_ade,
    write_ade_frame_relation,
    write_coco,
    write_imagenet,
    write_json,
)

MANIFEST_NAME = 'demo_data_manifest.json'
DEFAULT_NUM_TRAIN = 48
DEFAULT_NUM_VAL = 16
#: Variant -> (its manifest's file name, entry of <out>/ -> the writer of that
#: entry). A variant owns exactly these entries and touches nothing else in
#: <out>/; variants own disjoint entries, so they can share a folder.
#:
#: * ``'demo'``: the three demo datasets (README demo, end-to-end tests).
#: * ``'seg_frame_relation'``: the position-encoding study's segmentation set,
#:   ``ade_frame_relation/`` in the ADE20K layout with
#:   ``FRAME_RELATION_SEG_CLASSES``: classes defined by colour, by the half of
#:   the image frame and by the side of a neighbour, in the same images.
DATA_VARIANTS: Dict[str, tuple] = {
    'demo': (MANIFEST_NAME, {'imagenet': write_imagenet, 'coco': write_coco,
                             'ade': write_ade}),
    'seg_frame_relation': ('seg_frame_relation_manifest.json',
                           {'ade_frame_relation': write_ade_frame_relation}),
}


def _variant(variant: str) -> tuple:
    if variant not in DATA_VARIANTS:
        raise ValueError(f'variant={variant!r} is not a demo data variant; use one of '
                         f'{sorted(DATA_VARIANTS)}.')
    return DATA_VARIANTS[variant]


def manifest_name(variant: str = 'demo') -> str:
    """File name of a variant's manifest in the output directory."""
    return _variant(variant)[0]


def _expected_manifest(seed: int, num_train: int, num_val: int) -> dict:
    return dict(generator='mmsape.testing.demo_data', version=GENERATOR_VERSION,
                seed=seed, num_train=num_train, num_val=num_val)


def read_demo_manifest(root: Union[str, Path], variant: str = 'demo') -> Optional[dict]:
    """The manifest of demo data under ``root``, or None if absent or unreadable.

    Args:
        root (str | Path): Output directory of :func:`generate_demo_data`.
        variant (str): One of :data:`DATA_VARIANTS`. Defaults to 'demo'.

    Returns:
        dict, optional: Generator version, seed, counts and per-task statistics;
        ``complete`` is False while (or if interrupted during) generation.
    """
    try:
        manifest = json.loads((Path(root) / manifest_name(variant)).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_demo_data_current(root: Union[str, Path], seed: int = 0,
                         num_train: int = DEFAULT_NUM_TRAIN,
                         num_val: int = DEFAULT_NUM_VAL, variant: str = 'demo') -> bool:
    """Whether ``root`` holds complete demo data of this generator version and settings.

    Args:
        root (str | Path): Output directory of :func:`generate_demo_data`.
        seed (int): Expected seed.
        num_train (int): Expected training images per task.
        num_val (int): Expected validation images per task.
        variant (str): One of :data:`DATA_VARIANTS`. Defaults to 'demo'.

    Returns:
        bool: True when no regeneration is needed.
    """
    manifest = read_demo_manifest(root, variant)
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


def _generate(root: Path, seed: int, num_train: int, num_val: int, force: bool,
              variant: str) -> Path:
    manifest_file, writers = _variant(variant)
    owned = (*writers, manifest_file)
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be positive, '
                         f'got {num_train} and {num_val}')
    if num_train >= COCO_VAL_ID_OFFSET:
        raise ValueError(f'num_train must stay below {COCO_VAL_ID_OFFSET}')
    present = [name for name in owned if (root / name).exists()]
    # Empty directories (say, made by hand beforehand) hold nothing to protect.
    with_data = [name for name in present
                 if not (root / name).is_dir() or any((root / name).iterdir())]
    if with_data and read_demo_manifest(root, variant) is None and not force:
        # Someone else's data (say a real COCO under <out>/coco): never delete it.
        raise FileExistsError(
            f'{root} holds {with_data} but no {manifest_file}; refusing to overwrite data '
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
    write_json(dict(manifest, variant=variant, complete=False), root / manifest_file)
    counts = {'train': num_train, 'val': num_val}
    tasks = {name: write(root / name, seed, counts) for name, write in writers.items()}
    tmp = root / (manifest_file + '.tmp')
    write_json(dict(manifest, variant=variant, complete=True, tasks=tasks), tmp)
    os.replace(tmp, root / manifest_file)
    return root


def generate_demo_data(out_dir: Union[str, Path], seed: int = 0,
                       num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
                       force: bool = False, variant: str = 'demo') -> Path:
    """(Re)generate a variant's datasets (default: the three demo datasets)
    under ``out_dir``.

    Replaces earlier data of that variant there (recognised by its manifest).
    Other entries of ``out_dir`` are left alone.

    Args:
        out_dir (str | Path): Output directory, created if missing.
        seed (int): Seed; the same seed gives byte-identical files.
        num_train (int): Training images per task.
        num_val (int): Validation images per task.
        force (bool): Also replace the variant's entries (``imagenet/``,
            ``coco/`` and ``ade/`` for the demo) when no manifest shows that this
            generator wrote them. Defaults to False.
        variant (str): One of :data:`DATA_VARIANTS`. Defaults to 'demo'.

    Returns:
        Path: ``out_dir``.
    """
    root = Path(out_dir)
    _variant(variant)
    with _exclusive(root):
        return _generate(root, seed, num_train, num_val, force, variant)


def ensure_demo_data(root: Union[str, Path], seed: int = 0,
                     num_train: int = DEFAULT_NUM_TRAIN,
                     num_val: int = DEFAULT_NUM_VAL, variant: str = 'demo') -> Path:
    """Generate a variant's datasets (default: the demo datasets) under ``root``
    unless up to date already.

    Regenerates when the manifest is missing, incomplete, or records another
    generator version, seed or count.

    Args:
        root (str | Path): Output directory (e.g. ``data/demo``).
        seed (int): Seed.
        num_train (int): Training images per task.
        num_val (int): Validation images per task.
        variant (str): One of :data:`DATA_VARIANTS`. Defaults to 'demo'.

    Returns:
        Path: ``root``.
    """
    root = Path(root)
    if is_demo_data_current(root, seed, num_train, num_val, variant):
        return root
    with _exclusive(root):
        # Another process may have generated it while this one waited for the lock.
        if not is_demo_data_current(root, seed, num_train, num_val, variant):
            _generate(root, seed, num_train, num_val, force=False, variant=variant)
    return root
