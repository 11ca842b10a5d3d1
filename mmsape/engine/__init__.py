"""Training machinery: hooks, optimizer constructors, model wrappers, and checkpoint
I/O by registration.

Importing this package (``custom_imports=dict(imports=['mmsape.engine'])``, any
``type='mmsape.<Hook>'`` in a config, or ``mmsape.utils.register_all_modules``)
registers with MMEngine, whatever the entry point (mmsape's, mmdet's or mmseg's
``tools/train.py``, or a bare ``Runner.from_cfg``):

* :mod:`.checkpoint_loaders`: loaders for local, ``http(s)://``,
  ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` checkpoints that never
  execute pickled code, and the allowlist of MMEngine's checkpoint types;
* :mod:`.fileio`: an atomic local file backend, so checkpoints are written
  through a temporary file, fsync and rename;
* :class:`AtomicCheckpointHook`: ``CheckpointHook`` whose ``last_checkpoint``
  pointer is replaced atomically too.

:func:`init_cpu_process_group` starts multi-process runs on machines without
GPUs, under torchrun or srun (gloo, :class:`CPUDistributedDataParallel`);
:mod:`mmsape.apis` calls it.
"""
from . import checkpoint_loaders, fileio
from .hooks import AtomicCheckpointHook, ProgressBarHook, TorchRNGStateHook
from .optimizers import DeclaredDecayOptimWrapperConstructor, LayerDecayOptimWrapperConstructor
from .wrappers import CPUDistributedDataParallel, init_cpu_process_group

__all__ = [
    'checkpoint_loaders', 'fileio', 'AtomicCheckpointHook', 'CPUDistributedDataParallel',
    'DeclaredDecayOptimWrapperConstructor',
    'LayerDecayOptimWrapperConstructor', 'ProgressBarHook', 'TorchRNGStateHook',
    'init_cpu_process_group'
]
