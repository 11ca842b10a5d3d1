"""Session set-up and fixtures shared by all tests."""
import pytest
import torch


def pytest_sessionstart(session):
    # Build (or load from the cache) the compiled SaPE² CPU kernel once, before
    # any test starts subprocesses that would otherwise race to build it. A
    # failed build only warns: the Python kernel then runs everywhere.
    from mmsape.ops.sape2 import load_cpu_kernel
    load_cpu_kernel()


@pytest.fixture(scope='module')
def single_thread():
    """One torch thread for a module (``pytest.mark.usefixtures('single_thread')``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
