"""Same seed, deterministic mode: two short trainings give bit-identical results.

Runs the classification demo config in-process with MMEngine's Runner (real
mmpretrain dataset, pipeline, data preprocessor, AdamW, schedulers, SaPE²
backbone) for 3 iterations, twice with ``randomness=dict(seed=0,
deterministic=True)`` and once with another seed (which must differ, so the
comparison can fail), and compares every iteration's loss (message hub and
``scalars.json``) and the trained weights.
"""
import json
from pathlib import Path

import pytest
import torch

from mmsape.apis import build_train_runner
from mmsape.testing.demo_data import ensure_demo_data

ROOT = Path(__file__).resolve().parents[2]
CONFIG = 'configs/demo/vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet.py'
MAX_ITERS = 3


@pytest.fixture
def restore_process_state():
    """Undo what the run changes process-wide: torch's determinism flags and RNG
    (``deterministic=True``)."""
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    rng_state = torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    torch.set_rng_state(rng_state)


def train(work_dir: Path, seed: int, name: str):
    runner = build_train_runner(CONFIG, {
        'train_cfg.max_iters': MAX_ITERS,
        'randomness': dict(seed=seed, deterministic=True),
        'default_hooks.logger.interval': 1,
        'train_dataloader.batch_size': 4,
        'default_hooks.checkpoint': None,
        # Distinct names: the Runner's logger and visualizer are per-name singletons.
        'experiment_name': name,
        # Training only: no evaluation at the last iteration.
        'val_dataloader': None, 'val_cfg': None, 'val_evaluator': None,
        'custom_hooks': [dict(type='mmsape.TorchRNGStateHook')],
    }, work_dir=str(work_dir))
    runner.train()
    losses, counts = runner.message_hub.get_scalar('train/loss').data
    assert len(losses) == MAX_ITERS and (counts == 1).all()
    logged = [json.loads(line)['loss'] for line in
              next(work_dir.rglob('scalars.json')).read_text().splitlines()
              if '"loss"' in line]
    state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    return losses.tolist(), logged, state


def test_same_seed_gives_bit_identical_training(tmp_path, monkeypatch,
                                                restore_process_state):
    monkeypatch.chdir(ROOT)
    ensure_demo_data(ROOT / 'data' / 'demo')
    first = train(tmp_path / 'a', seed=0, name='determinism_a')
    second = train(tmp_path / 'b', seed=0, name='determinism_b')
    assert torch.are_deterministic_algorithms_enabled()

    losses, logged, state = first
    assert all(loss == loss and loss > 0 for loss in losses)  # finite, positive
    # scalars.json holds the LoggerHook's window mean (window 10 > 3 iterations).
    running_means = [sum(losses[:i + 1]) / (i + 1) for i in range(MAX_ITERS)]
    assert logged == pytest.approx(running_means, rel=1e-6)
    assert losses == second[0], 'same seed, different losses'
    assert logged == second[1]
    assert state.keys() == second[2].keys()
    for key, value in state.items():
        assert torch.equal(value, second[2][key]), f'{key} differs between the runs'

    other_losses, _, other_state = train(tmp_path / 'c', seed=1, name='determinism_c')
    assert other_losses != losses, 'the seed has no effect: the comparison proves nothing'
    assert not all(torch.equal(value, other_state[key]) for key, value in state.items())
