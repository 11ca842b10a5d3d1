from .alibi2d import ALiBi2D

__all__ = ['ALiBi2D']
