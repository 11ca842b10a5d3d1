# Copyright (c) OpenMMLab. All rights reserved.
"""The data types a full MMEngine checkpoint holds, for ``torch.load(weights_only=True)``.

PyTorch >= 2.6 loads with ``weights_only=True`` by default. MMEngine 0.10.7 calls
``torch.load`` without that argument, so resuming a full Runner checkpoint fails:
besides tensors it contains the message hub state
(:class:`mmengine.logging.HistoryBuffer` objects, numpy arrays and scalars,
``dataset_meta``). Passing ``weights_only=False`` would "fix" that by letting any
checkpoint run arbitrary code while it is unpickled, which is unacceptable for
files downloaded from the internet. Instead mmsape keeps ``weights_only=True`` and
allowlists exactly the data types MMEngine's own checkpoints need
(:func:`mmengine_checkpoint_safe_globals`); anything else is still refused.

Requires torch >= 2.6 (``torch.serialization.add_safe_globals`` with
``(object, "module.name")`` tuples).
"""
import pickle
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['mmengine_checkpoint_safe_globals', 'allow_mmengine_checkpoint_types']

# The only statistics methods MMEngine pickles by reference. ``HistoryBuffer``
# stores them in its state, and pickle protocol 2 serialises a method as
# ``builtins.getattr(HistoryBuffer, '<name>')``.
_HISTORY_BUFFER_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """A ``builtins.getattr`` stand-in that only resolves what MMEngine needs.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle
    as ``getattr(HistoryBuffer, 'mean')`` etc. Allowlisting the real
    ``getattr`` would let a crafted file reach arbitrary attributes of every
    other allowlisted object, so this function is registered under the name
    ``builtins.getattr`` instead and refuses everything else.

    Args:
        obj (Any): The object whose attribute is requested.
        name (str): The attribute name.

    Returns:
        Any: ``getattr(HistoryBuffer, name)`` for the four statistics methods.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    # Torch only turns ``UnpicklingError`` into its "weights only" error, so
    # raise that type to be reported (and classified) like any refused global.
    raise pickle.UnpicklingError(
        f'Refused builtins.getattr({obj!r}, {name!r}): only the statistics '
        f'methods {sorted(_HISTORY_BUFFER_STATISTICS)} of '
        'mmengine.logging.HistoryBuffer may be resolved from a checkpoint.')


def _empty_bytes(*args: Any) -> bytes:
    """A ``builtins.bytes`` stand-in that only builds the empty bytes object.

    Pickle protocol 2 (``torch.save``'s) writes ``b''`` as the call
    ``bytes()``, and non-empty bytes as ``_codecs.encode`` (allowed by
    PyTorch). So an honest checkpoint holds ``bytes()`` only when it stores
    empty bytes: directly, or as the data of an empty numpy array (an empty
    ``HistoryBuffer``, a hook's ``np.array([])``). Any argument is refused:
    ``bytes(10**12)`` would allocate a terabyte from a file of a few bytes.

    Args:
        *args: The pickled call's arguments; there must be none.

    Returns:
        bytes: ``b''``.
    """
    if args:
        raise pickle.UnpicklingError(
            f'Refused builtins.bytes(...) with {len(args)} argument(s): checkpoints '
            'pickle only empty bytes as a call of bytes(), without arguments.')
    return b''


def _numpy_multiarray_module() -> Any:
    """Return numpy's C ``multiarray`` module without deprecation warnings."""
    try:  # numpy >= 1.26 (and 2.x, where ``numpy.core`` is deprecated)
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - old numpy
        from numpy.core import multiarray
    return multiarray


def _numpy_dtype_classes() -> list:
    """The concrete dtype classes whose instances a checkpoint may rebuild.

    ``ObjectDType`` is excluded on purpose: object arrays hold arbitrary Python
    objects, which model/training-state checkpoints never need.
    """
    try:
        import numpy.dtypes as numpy_dtypes  # numpy >= 1.25
    except ImportError:  # pragma: no cover - old numpy: one dtype class
        return []
    classes = []
    for name in sorted(dir(numpy_dtypes)):
        cls = getattr(numpy_dtypes, name)
        if (isinstance(cls, type) and issubclass(cls, np.dtype)
                and cls is not numpy_dtypes.ObjectDType):
            classes.append(cls)
    return classes


@lru_cache(maxsize=None)
def mmengine_checkpoint_safe_globals() -> tuple:
    """The globals a full MMEngine Runner checkpoint needs, and nothing else.

    Found empirically by saving a Runner checkpoint (model, SGD optimizer with
    momentum, param scheduler, message hub, ``dataset_meta`` with numpy
    arrays, an empty ``HistoryBuffer``) and loading it with ``weights_only=True``. Everything else a
    Runner saves (dicts, lists, tuples, ``OrderedDict``, ``Counter``,
    tensors, ``torch.Size``) is already allowed by PyTorch.

    Each entry is either an object (registered under its own
    ``module.qualname``) or an ``(object, 'module.name')`` tuple that maps the
    name written in the pickle to the object used when loading.

    Returns:
        tuple: Entries for :func:`torch.serialization.add_safe_globals`.
    """
    multiarray = _numpy_multiarray_module()
    safe_globals: list = [
        # Plain log container; its state is numpy arrays, an int and the
        # statistics-method table (restricted below).
        HistoryBuffer,
        # Restricted stand-in for the ``getattr`` calls in HistoryBuffer state.
        (_history_buffer_getattr, 'builtins.getattr'),
        # Restricted stand-in for ``bytes()``: empty bytes, and the data of
        # empty numpy arrays, in pickle protocol 2.
        (_empty_bytes, 'builtins.bytes'),
        # numpy arrays: ``_reconstruct`` only allocates an empty ndarray (it
        # rejects non-ndarray classes), the data comes from ``ndarray``'s
        # ``__setstate__``, and object arrays are impossible because
        # ``ObjectDType`` is not allowlisted.
        np.ndarray,
        (multiarray._reconstruct, 'numpy._core.multiarray._reconstruct'),
        # numpy < 2 wrote the same function under its old module path.
        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
        # numpy scalars (e.g. ``np.float64`` ETA in the message hub): builds
        # a scalar from a dtype and raw bytes.
        (multiarray.scalar, 'numpy._core.multiarray.scalar'),
        (multiarray.scalar, 'numpy.core.multiarray.scalar'),
        # dtype descriptors: ``np.dtype('<f8', ...)`` plus the concrete
        # classes whose ``__setstate__`` the unpickler invokes.
        np.dtype,
    ]
    safe_globals.extend(_numpy_dtype_classes())
    return tuple(safe_globals)


def allow_mmengine_checkpoint_types() -> None:
    """Allowlist the types of MMEngine checkpoints for ``weights_only`` loads.

    Idempotent: PyTorch keeps the allowlist as a set, so calling this again
    (e.g. before every load, or after a test cleared the list) is harmless.
    The registration is process-wide, which also fixes MMEngine code paths
    that call ``torch.load`` themselves.
    """
    if not hasattr(torch.serialization, 'add_safe_globals'):
        raise RuntimeError(
            'Loading MMEngine checkpoints safely requires torch >= 2.6 '
            f'(torch.serialization.add_safe_globals); found {torch.__version__}.')
    torch.serialization.add_safe_globals(list(mmengine_checkpoint_safe_globals()))
