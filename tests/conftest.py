"""Session set-up shared by all tests."""


def pytest_sessionstart(session):
    # Build (or load from the cache) the compiled SaPE² CPU kernel once, before
    # any test starts subprocesses that would otherwise race to build it. A
    # failed build only warns: the Python kernel then runs everywhere.
    from mmsape.models.pos_encodings.sape2_kernels import load_cpu_kernel
    load_cpu_kernel()
