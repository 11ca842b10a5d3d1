"""Hooks and optimizer constructors registered in the mmsape scope."""
from .optimizers import LayerDecayOptimWrapperConstructor

__all__ = ['LayerDecayOptimWrapperConstructor']
