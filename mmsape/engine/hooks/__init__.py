from .checkpoint_hook import AtomicCheckpointHook
from .progress_bar_hook import ProgressBarHook
from .torch_rng_state_hook import TorchRNGStateHook

__all__ = ['AtomicCheckpointHook', 'ProgressBarHook', 'TorchRNGStateHook']
