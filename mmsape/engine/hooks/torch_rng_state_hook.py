"""torch's random state in checkpoints, so that a resumed run repeats an uninterrupted one."""
import torch
from mmengine.hooks import Hook

from mmsape.registry import HOOKS


@HOOKS.register_module()
class TorchRNGStateHook(Hook):
    """Save torch's random state in checkpoints and restore it on resume.

    MMEngine resumes the model, optimizer, schedulers and the data order (it
    re-draws the batches already seen), but not torch's global generator, so
    dropout and drop-path masks after a resume differ from an uninterrupted
    run. This hook stores the generator state with each checkpoint and puts it
    back right before the first iteration after a resume, which makes a resumed
    run repeat the uninterrupted run's losses exactly (on CPU, deterministic ops).

    numpy's and Python's generators are deliberately not restored: the data
    pipeline draws from them, and MMEngine's re-drawing of the skipped batches
    already brings them to the uninterrupted run's state.

    Examples:
        >>> custom_hooks = [dict(type='mmsape.TorchRNGStateHook')]
    """
    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._pending_state = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['torch_rng_state'] = torch.get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending_state = checkpoint.get('torch_rng_state')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending_state is not None:
            torch.set_rng_state(self._pending_state)
            self._pending_state = None
