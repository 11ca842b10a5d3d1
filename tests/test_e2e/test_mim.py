"""OpenMMLab's launcher finds mmsape's configs and tools the way it finds
mmdet's: in ``mmsape/.mim``, which setup.py's ``add_mim_extension`` fills with
copies when a wheel is built and with links to the repository's folders for an
editable install."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builders import ROOT, build_wheel, copy_checkout, install_wheel, short_run

pytestmark = pytest.mark.e2e

CONFIG = 'configs/demo/vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet.py'


@pytest.fixture(scope='module')
def source_copy(tmp_path_factory) -> Path:
    """The working tree's files (tracked, and untracked unless ignored) in a
    fresh folder: builds write into the source tree."""
    return copy_checkout(tmp_path_factory.mktemp('source'), untracked=True)


@pytest.fixture(scope='module')
def wheel_install(source_copy, tmp_path_factory) -> Path:
    """mmsape installed from a wheel built out of the working tree, in a folder
    to put on PYTHONPATH."""
    wheel = build_wheel(source_copy, tmp_path_factory.mktemp('dist'))
    return install_wheel(wheel, tmp_path_factory.mktemp('site'))


def test_a_wheel_carries_copies_of_the_configs_and_tools(wheel_install):
    mim_dir = wheel_install / 'mmsape' / '.mim'
    for folder, pattern in (('configs', '*.py'), ('tools', '*.py')):
        originals = sorted(p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob(pattern)
                           if '__pycache__' not in p.parts)
        assert originals
        for name in originals:
            copy = mim_dir / folder / name
            assert copy.is_file() and not copy.is_symlink(), copy
            assert copy.read_bytes() == (ROOT / folder / name).read_bytes(), copy


def test_an_editable_install_links_the_repository_folders(source_copy):
    """What ``pip install -e .`` runs (PEP 660: setup.py editable_wheel)."""
    subprocess.run([sys.executable, 'setup.py', '-q', 'editable_wheel', '--dist-dir',
                    str(source_copy / 'build' / 'editable')], cwd=source_copy, check=True,
                   capture_output=True)
    mim_dir = source_copy / 'mmsape' / '.mim'
    for folder in ('configs', 'tools'):
        link = mim_dir / folder
        assert link.is_symlink() and link.resolve() == (source_copy / folder).resolve()
    # mim's search for a config named without its folder (followed links)
    from mim.utils import recursively_find
    found = recursively_find(str(source_copy / 'mmsape'), Path(CONFIG).name, followlinks=True)
    assert [Path(p).resolve() for p in found] == [(source_copy / CONFIG).resolve()]


def mim(*args, site: Path) -> str:
    # The wheel's mmsape first on the path: mim locates a package through its
    # distribution, and its tools then import that copy. The copy's compiled
    # kernel would be built for its own path: its Python twin runs instead.
    env = dict(os.environ, PYTHONPATH=str(site), MMSAPE_SAPE2_CPU_KERNEL='0')
    result = subprocess.run([str(Path(sys.executable).with_name('mim')), *map(str, args)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


def test_mim_train_and_test_by_config_name(wheel_install, demo_data, tmp_path):
    name = Path(CONFIG).name
    work_dir = tmp_path / 'work'
    output = mim('train', 'mmsape', name, '--work-dir', work_dir, '--cfg-options',
                 *short_run(CONFIG, iters=3, checkpoint_every=3), 'train_cfg.val_interval=1000',
                 site=wheel_install)
    mim_dir = wheel_install / 'mmsape' / '.mim'
    assert f'will use {mim_dir / "configs" / "demo" / name} instead' in output
    assert f'{mim_dir / "tools" / "train.py"} {mim_dir / "configs" / "demo" / name}' in output
    checkpoint = work_dir / 'iter_3.pth'
    assert checkpoint.is_file()

    metrics = tmp_path / 'metrics.json'
    output = mim('test', 'mmsape', name, '--checkpoint', checkpoint, '--work-dir',
                 tmp_path / 'test', '--metrics-out', metrics, site=wheel_install)
    assert str(mim_dir / 'tools' / 'test.py') in output
    assert math.isfinite(json.loads(metrics.read_text())['accuracy/top1'])
