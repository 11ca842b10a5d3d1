"""Hooks and optimizer constructors registered in the mmsape scope."""
from .hooks import ProgressBarHook
from .optimizers import LayerDecayOptimWrapperConstructor

__all__ = ['LayerDecayOptimWrapperConstructor', 'ProgressBarHook']
