"""MMEngine's CheckpointHook with the ``last_checkpoint`` pointer written atomically."""
import os.path as osp
import tempfile
from typing import Any, Callable

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from mmsape.registry import HOOKS
from mmsape.utils import atomic_write

#: The file in ``work_dir`` through which ``resume=True`` finds the latest checkpoint.
LAST_CHECKPOINT = 'last_checkpoint'


class _RunnerWithWorkDir:
    """A view of a Runner that reports another ``work_dir``; every other
    attribute (``save_checkpoint``, ``message_hub``, ...) is the runner's own."""

    def __init__(self, runner: Any, work_dir: str) -> None:
        self._runner = runner
        self.work_dir = work_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def save_with_staged_pointer(save_checkpoint_with_step: Callable, runner: Any, step: int,
                             meta: dict) -> str:
    """Run MMEngine's ``CheckpointHook._save_checkpoint_with_step`` with its
    ``last_checkpoint`` write redirected to a staging folder; return that text.

    The one place where mmsape relies on how MMEngine works inside: in 0.10.7
    the method saves the checkpoint (through the file backend, atomic once
    :mod:`mmsape.engine` is imported) and then writes
    ``osp.join(runner.work_dir, 'last_checkpoint')`` with a plain ``open(..., 'w')``,
    which a kill between truncating and writing leaves empty, after which
    ``resume=True`` cannot find any checkpoint. Handing it a runner whose
    ``work_dir`` is a fresh folder next to the real one keeps that write away
    from the real pointer, which the caller then replaces atomically. Nothing of
    MMEngine's is modified. If MMEngine stops writing the pointer there, this
    raises instead of silently leaving a non-atomic write in place
    (``tests/test_engine/test_checkpoint_hook.py`` checks it against the
    installed MMEngine).

    Args:
        save_checkpoint_with_step (Callable): MMEngine's bound method
            ``CheckpointHook._save_checkpoint_with_step``.
        runner (Runner): The runner being trained.
        step (int): The epoch or iteration the checkpoint is named after.
        meta (dict): The checkpoint's ``meta``.

    Returns:
        str: What MMEngine would have written to ``last_checkpoint``.
    """
    with tempfile.TemporaryDirectory(prefix=f'.{LAST_CHECKPOINT}.',
                                     dir=runner.work_dir) as staging:
        save_checkpoint_with_step(_RunnerWithWorkDir(runner, staging), step, meta)
        staged = osp.join(staging, LAST_CHECKPOINT)
        if not osp.isfile(staged):
            raise RuntimeError(
                "MMEngine's CheckpointHook no longer writes 'last_checkpoint' under "
                'runner.work_dir, so mmsape.AtomicCheckpointHook cannot make that write '
                'atomic; use MMEngine 0.10.7 (requirements/runtime.txt) or update '
                'mmsape/engine/hooks/checkpoint_hook.py.')
        with open(staged, encoding='utf-8') as f:
            return f.read()


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """MMEngine's :class:`~mmengine.hooks.CheckpointHook`, also atomic for
    ``last_checkpoint``.

    Checkpoint files are written atomically by the file backend that importing
    :mod:`mmsape.engine` registers, whatever hook saves them. The
    ``last_checkpoint`` pointer, however, is written by ``CheckpointHook`` itself
    with a plain ``open()``; this hook replaces it atomically instead (temporary
    file, fsync, ``os.replace``), so a run killed at any moment leaves a pointer
    to a complete checkpoint. Same arguments and behaviour as ``CheckpointHook``.

    Examples:
        >>> default_hooks = dict(checkpoint=dict(
        ...     type='mmsape.AtomicCheckpointHook', interval=1000, by_epoch=False))
    """

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        if not is_main_process():  # MMEngine writes the pointer on rank 0 only
            super()._save_checkpoint_with_step(runner, step, meta)
            return
        pointer = save_with_staged_pointer(super()._save_checkpoint_with_step, runner, step,
                                           meta)
        atomic_write(pointer.encode('utf-8'), osp.join(runner.work_dir, LAST_CHECKPOINT))
