"""A cache for tensors that depend on the token grid alone (rotary angles, fixed biases)."""
from collections import OrderedDict
from typing import Callable, Hashable

import torch
from torch import Tensor


class GridCache:
    """The last few tensors an encoding built from the grid size alone, by key.

    Encodings whose tensors depend only on the grid (RoPE's axial angles,
    LookHere's bias) build them once per grid and device, not once per layer and
    batch. Three rules make that safe:

    * Under ``torch.compile`` nothing is cached: the tensor is built inside the
      graph (a Python-side dict would break it, and the compiler fuses the
      building into its kernels).
    * A tensor built under ``torch.inference_mode`` is an inference tensor,
      which autograd cannot save for backward; such tensors are kept apart, so
      that evaluation never hands one to training.
    * Only ``max_entries`` keys are kept (least recently used goes first), so
      that a detector's varying image sizes do not accumulate; ViTDet layers
      alternate between two grids (windows and global), hence the default 4.

    The key must say everything the tensor depends on (grid size, prefix
    tokens, device, ...).

    Args:
        max_entries (int): Tensors kept. Defaults to 4.

    Examples:
        >>> import torch
        >>> cache = GridCache()
        >>> first = cache.get((3, 4), lambda: torch.arange(12.).view(3, 4))
        >>> cache.get((3, 4), lambda: torch.zeros(3, 4)) is first  # built once
        True
    """

    def __init__(self, max_entries: int = 4) -> None:
        if max_entries < 1:
            raise ValueError(f'max_entries={max_entries} must be >= 1.')
        self.max_entries = max_entries
        self._entries: 'OrderedDict[Hashable, Tensor]' = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Tensor]) -> Tensor:
        """The tensor stored under ``key``, built by ``build()`` when missing."""
        if torch.compiler.is_compiling():
            return build()
        key = (key, torch.is_inference_mode_enabled())
        tensor = self._entries.get(key)
        if tensor is None:
            tensor = build()
            self._entries[key] = tensor
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return tensor

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ['GridCache']
