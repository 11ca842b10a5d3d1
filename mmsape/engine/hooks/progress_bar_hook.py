"""Progress bars for short runs."""
import sys
from typing import Optional

from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from mmsape.registry import HOOKS


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """Progress bars for training iterations and evaluation batches.

    MMEngine's LoggerHook prints a line every ``interval`` iterations; for short
    runs (the CPU demo) a bar that moves every iteration says more. Only rank 0
    draws. Training bars count iterations, so use it with iteration-based loops.

    Examples:
        >>> custom_hooks = [dict(type='mmsape.ProgressBarHook')]
    """
    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._bar: Optional[ProgressBar] = None
        # validation inside training interrupts the training bar, then resumes it
        self._paused_train_bar: Optional[ProgressBar] = None

    def _start(self, runner, total: int, what: str) -> None:
        if runner.rank == 0 and total > 0:
            print(f'\n{what}:', file=sys.stderr)
            self._bar = ProgressBar(total, file=sys.stderr)

    def _advance(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def _finish(self) -> None:
        if self._bar is not None:
            print(file=sys.stderr)
            self._bar = None

    def before_train(self, runner) -> None:
        self._start(runner, runner.max_iters - runner.iter, 'training (iterations)')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._advance()

    def after_train(self, runner) -> None:
        self._finish()

    def before_val_epoch(self, runner) -> None:
        self._paused_train_bar = self._bar
        self._start(runner, len(runner.val_dataloader), 'validation (images)')

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._advance()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._finish()
        self._bar, self._paused_train_bar = self._paused_train_bar, None

    def before_test_epoch(self, runner) -> None:
        self._start(runner, len(runner.test_dataloader), 'testing (images)')

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._advance()

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._finish()
