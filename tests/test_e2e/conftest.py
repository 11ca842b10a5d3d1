"""The demo data and briefly trained demo models, shared by the end-to-end tests."""
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from mmsape.testing.demo_data import ensure_demo_data

from builders import DEMO_CONFIGS, ROOT, run_tool, short_run


@pytest.fixture(scope='session')
def demo_data() -> Path:
    return ensure_demo_data(ROOT / 'data' / 'demo')


@pytest.fixture(scope='session')
def trained_demo(demo_data, tmp_path_factory) -> Callable[[str], Tuple[str, Path]]:
    """``trained_demo(task) -> (config, checkpoint)``: the task's demo config
    after three training iterations (trained once per session, on first use)."""
    trained: Dict[str, Tuple[str, Path]] = {}

    def get(task: str) -> Tuple[str, Path]:
        if task not in trained:
            config, work_dir = DEMO_CONFIGS[task], tmp_path_factory.mktemp(f'trained-{task}')
            # no validation: the tests evaluate
            run_tool('tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
                     *short_run(config, iters=3, checkpoint_every=3),
                     'train_cfg.val_interval=1000')
            trained[task] = (config, work_dir / 'iter_3.pth')
        return trained[task]

    return get
