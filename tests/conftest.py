"""Session set-up and fixtures shared by all tests."""
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch


def pytest_sessionstart(session):
    # Build (or load from the cache) the compiled SaPE² CPU kernel once, before
    # any test starts subprocesses that would otherwise race to build it. A
    # failed build only warns (the Python kernel then runs everywhere, and the
    # tests of the compiled kernel skip), unless MMSAPE_REQUIRE_COMPILED_KERNELS=1
    # (CI): then no test runs.
    from mmsape.ops.sape2 import load_cpu_kernel
    try:
        load_cpu_kernel()
    except RuntimeError as error:  # raised only when the kernel is required
        pytest.exit(f'The test session needs the compiled SaPE² CPU kernel: {error}',
                    returncode=pytest.ExitCode.TESTS_FAILED)


@pytest.fixture(scope='module')
def single_thread():
    """One torch thread for a module (``pytest.mark.usefixtures('single_thread')``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# Malicious checkpoints: unpickling them runs code that creates a marker file.
# ---------------------------------------------------------------------------
class ShellPayload:
    """Pickles as ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


class ExecPayload:
    """Pickles as ``builtins.exec("open(<marker>, 'w').close()")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({str(self.marker)!r}, "w").close()', )


@pytest.fixture
def write_malicious_checkpoint() -> Callable[..., Path]:
    """``write(path, marker, payload='os.system')`` saves a checkpoint with weights
    and a payload (``'os.system'`` or ``'exec'``) that creates ``marker`` when
    unpickled; returns ``path``."""

    def write(path: Path, marker: Path, payload: str = 'os.system') -> Path:
        payload_cls = {'os.system': ShellPayload, 'exec': ExecPayload}[payload]
        torch.save({'state_dict': {'w': torch.ones(1)}, 'x': payload_cls(marker)}, path)
        return path

    return write


# ---------------------------------------------------------------------------
# Remote checkpoints without network
# ---------------------------------------------------------------------------
@pytest.fixture
def fake_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``{url: local file}`` served by a fake ``torch.hub.download_url_to_file``;
    the hub cache is ``tmp_path/hub``. ``downloads`` records every fetched URL."""
    served, downloads = {}, []

    def download_url_to_file(url, dst, hash_prefix=None, progress=True):
        assert url in served, f'unexpected download of {url}'
        downloads.append(url)
        shutil.copyfile(served[url], dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download_url_to_file)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    return dict(files=served, downloads=downloads, cache=tmp_path / 'hub' / 'checkpoints')
