"""Session set-up and fixtures shared by all tests."""
import functools
import http.server
import ipaddress
import os
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Dict

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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # not every request on the test's stderr
        pass


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ''
    try:
        return host == 'localhost' or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``(folder, base URL)``: ``tmp_path/served`` served over HTTP on 127.0.0.1;
    downloads cache under ``tmp_path/torch_home``. In this process, a request to
    any other host fails as an unreachable one would, so no test reaches outside
    the machine (see :func:`offline_env` for subprocesses)."""
    served = tmp_path / 'served'
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for proxy in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy',
                  'ALL_PROXY'):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))

    def loopback_only(urlopen):
        def guarded(request, *args, **kwargs):
            url = request.full_url if isinstance(request, urllib.request.Request) else request
            if not _is_loopback(url):
                raise urllib.error.URLError(f'tests reach no host outside the machine: {url}')
            return urlopen(request, *args, **kwargs)
        return guarded

    monkeypatch.setattr(urllib.request, 'urlopen', loopback_only(urllib.request.urlopen))
    monkeypatch.setattr(torch.hub, 'urlopen', loopback_only(torch.hub.urlopen))
    yield served, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def offline_env(tmp_path: Path) -> Dict[str, str]:
    """The environment for a subprocess that must not reach outside the machine:
    every proxy variable names a closed port on 127.0.0.1 (so a request to any
    other host fails at once, as on a machine without internet), loopback
    requests go direct, and the torch hub cache is ``tmp_path/torch_home``."""
    dead_proxy = 'http://127.0.0.1:9'
    env = dict(os.environ, TORCH_HOME=str(tmp_path / 'torch_home'),
               no_proxy='127.0.0.1,localhost', NO_PROXY='127.0.0.1,localhost')
    for proxy in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy',
                  'ALL_PROXY'):
        env[proxy] = dead_proxy
    return env
