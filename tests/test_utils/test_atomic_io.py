# Copyright (c) OpenMMLab. All rights reserved.
"""Writes that never leave a partial file (mmsape.utils.atomic_io)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mmsape.utils import atomic_save, atomic_write, load_checkpoint_safely

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_atomic_save_keeps_old_file_when_save_crashes(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / 'sub' / 'latest.pth'
    atomic_save({'version': 1, 'w': torch.arange(4.0)}, path)  # creates sub/
    assert os.listdir(path.parent) == ['latest.pth']  # no temp files on success

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 half of a checkpoint')
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(torch, 'save', crashing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({'version': 2, 'w': torch.zeros(4)}, path)
    monkeypatch.undo()

    old = load_checkpoint_safely(path)
    assert old['version'] == 1
    torch.testing.assert_close(old['w'], torch.arange(4.0))
    assert os.listdir(path.parent) == ['latest.pth']  # the partial temp file was removed


def test_atomic_write_replaces_the_file(tmp_path: Path) -> None:
    """A new file (a new inode) is renamed onto the target, never written in place."""
    path = tmp_path / 'pointer'
    atomic_write(b'old', path)
    old_inode = path.stat().st_ino
    atomic_write(b'new', path)
    assert path.read_bytes() == b'new'
    assert path.stat().st_ino != old_inode
    assert os.listdir(tmp_path) == ['pointer']


def test_atomic_save_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / 'ckpt.pth'
    atomic_save({'version': 0, 'w': torch.zeros(1)}, path)
    script = textwrap.dedent("""
        import sys, torch
        from mmsape.utils import atomic_save
        for version in range(1, 100):
            weights = torch.full((8_000_000, ), float(version))  # 32 MB per save
            print('begin', version, flush=True)
            atomic_save({'version': version, 'w': weights}, sys.argv[1])
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
    child = subprocess.Popen([sys.executable, '-c', script, str(path)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in child.stdout:
            if line.strip() == 'begin 3':
                break
        # Kill while the third save is being written to its temp file.
        deadline = time.monotonic() + 30
        while not any(name.endswith('.tmp') for name in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, 'child never started writing'
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)

    loaded = load_checkpoint_safely(path)
    assert loaded['version'] in (2, 3)  # the last complete save, never a torn one
    assert bool((loaded['w'] == loaded['version']).all())
