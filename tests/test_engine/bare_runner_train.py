"""Train a config with nothing but MMEngine: ``Runner.from_cfg(cfg).train()``.

A helper of ``test_bare_runner.py``, run in a subprocess: no mmsape tool, no
``prepare_scope``, no import of mmsape here. Whatever mmsape does to checkpoint
I/O comes from the config alone (its ``custom_imports`` and hook types).

Usage::

    python bare_runner_train.py CONFIG WORK_DIR [--resume] [--kill-in-save STEP]
                                [--cfg-options key=value ...]
"""
import argparse
import os
import signal
import sys

from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.runner import Runner


class SigkillInSaveHook(Hook):
    """SIGKILL this process in the middle of saving the checkpoint of ``step``.

    ``before_save_checkpoint`` runs right before the checkpoint is serialised
    and written; from there the first call of ``os.fsync`` (the checkpoint's
    bytes are in a file, not yet durable or published) kills the process, like
    a pre-emption or the OOM killer would.
    """
    priority = 'LOWEST'

    def __init__(self, step: int) -> None:
        self.step = step

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if checkpoint['meta']['iter'] != self.step:
            return

        def kill_at_fsync(frame, event, arg):
            if event == 'c_call' and arg is os.fsync:
                os.kill(os.getpid(), signal.SIGKILL)

        sys.setprofile(kill_at_fsync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('work_dir')
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--kill-in-save', type=int, default=None, metavar='STEP')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args()

    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir
    cfg.resume = args.resume
    runner = Runner.from_cfg(cfg)
    if args.kill_in_save is not None:
        runner.register_hook(SigkillInSaveHook(args.kill_in_save))
    runner.train()


if __name__ == '__main__':
    main()
