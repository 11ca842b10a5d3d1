"""Hooks and optimizer constructors registered in the mmsape scope."""
from .hooks import ProgressBarHook, TorchRNGStateHook
from .optimizers import DeclaredDecayOptimWrapperConstructor, LayerDecayOptimWrapperConstructor
from .wrappers import CPUDistributedDataParallel

__all__ = [
    'CPUDistributedDataParallel', 'DeclaredDecayOptimWrapperConstructor',
    'LayerDecayOptimWrapperConstructor', 'ProgressBarHook', 'TorchRNGStateHook'
]
