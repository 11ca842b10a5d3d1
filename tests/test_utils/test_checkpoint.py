# Copyright (c) OpenMMLab. All rights reserved.
"""Safe loading of checkpoints as plain library code (mmsape.utils.checkpoint and
mmsape.utils.safe_globals). How MMEngine is made to use it: tests/test_engine/."""
import contextlib
import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from torch import nn

import mmsape.utils.safe_globals as safe_globals_module
from mmsape.utils import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    allow_mmengine_checkpoint_types,
    load_checkpoint_safely,
    load_url_safely,
    mmengine_checkpoint_safe_globals,
)


@contextlib.contextmanager
def restored_safe_globals() -> Iterator[None]:
    """The allowlist is process-wide state: put it back after a test."""
    safe_globals = torch.serialization.get_safe_globals()
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(safe_globals)


@pytest.fixture(autouse=True)
def _isolate_global_state() -> Iterator[None]:
    with restored_safe_globals():
        yield


# ---------------------------------------------------------------------------
# The allowlist itself
# ---------------------------------------------------------------------------
def test_allowlist_holds_only_data_types() -> None:
    multiarray = safe_globals_module._numpy_multiarray_module()
    allowed_functions = {safe_globals_module._history_buffer_getattr,
                         safe_globals_module._empty_bytes,
                         multiarray._reconstruct, multiarray.scalar}
    for entry in mmengine_checkpoint_safe_globals():
        obj = entry[0] if isinstance(entry, tuple) else entry
        assert isinstance(obj, type) or obj in allowed_functions, entry
        assert obj is not getattr and obj is not bytes and obj is not np.dtypes.ObjectDType
    allow_mmengine_checkpoint_types()
    allow_mmengine_checkpoint_types()  # idempotent
    registered = torch.serialization.get_safe_globals()
    assert len(registered) == len(set(registered))
    assert set(mmengine_checkpoint_safe_globals()) <= set(registered)


def test_history_buffer_round_trip(tmp_path: Path) -> None:
    buffer = HistoryBuffer()
    for value in (1.0, 2.0, 6.0):
        buffer.update(value)
    path = tmp_path / 'hub.pth'
    torch.save({'buffer': buffer, 'eta': np.float64(1.5), 'arr': np.arange(4)}, path)
    loaded = load_checkpoint_safely(path)
    assert loaded['buffer'].mean() == pytest.approx(3.0)
    assert loaded['buffer'].statistics('max') == 6.0
    assert loaded['eta'] == 1.5
    np.testing.assert_array_equal(loaded['arr'], np.arange(4))


# ---------------------------------------------------------------------------
# Malicious pickles are refused, never executed
# ---------------------------------------------------------------------------
# torch reports builtins without the ``builtins.`` prefix.
@pytest.mark.parametrize('payload, offending', [('os.system', 'posix.system'),
                                                ('exec', 'exec')])
def test_malicious_pickle_is_refused(tmp_path: Path, write_malicious_checkpoint,
                                     payload: str, offending: str) -> None:
    marker = tmp_path / 'pwned'
    path = write_malicious_checkpoint(tmp_path / 'evil.pth', marker, payload)

    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint_safely(path)
    message = str(error.value)
    assert str(path) in message
    assert 'not plain weights' in message and 'refused for safety' in message
    if os.name == 'posix':  # os.system lives in ``nt`` on Windows
        assert f'offending global: {offending}' in message
    assert not marker.exists()

    # Control: the payload is real, an unrestricted unpickle does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


class GetattrPayload:
    """Pickles as ``builtins.getattr(obj, name)``."""

    def __init__(self, obj: object, name: str) -> None:
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


@pytest.mark.parametrize('obj, name', [(HistoryBuffer, 'update'), (OrderedDict, 'fromkeys'),
                                       (HistoryBuffer, '__init__')])
def test_getattr_is_restricted_to_history_buffer_statistics(tmp_path: Path, obj: object,
                                                            name: str) -> None:
    path = tmp_path / 'getattr.pth'
    torch.save({'x': GetattrPayload(obj, name)}, path)
    with pytest.raises(UnsafeCheckpointError, match='builtins.getattr'):
        load_checkpoint_safely(path)
    torch.save({'x': GetattrPayload(HistoryBuffer, 'mean')}, path)
    assert load_checkpoint_safely(path)['x'] is HistoryBuffer.mean


class ReducePayload:
    """Pickles as ``function(*args)``, then ``BUILD`` with ``state`` if given."""

    def __init__(self, function, args: tuple, state=None) -> None:
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (
            self.function, self.args, self.state)


def torch_file_with_pickle(path: Path, pickle_bytes: bytes) -> Path:
    """A torch zip checkpoint whose ``data.pkl`` is ``pickle_bytes`` (no tensors)."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as source:
        entries = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as target:
        for name, data in entries.items():
            target.writestr(name, pickle_bytes if name.endswith('/data.pkl') else data)
    return path


@pytest.mark.parametrize('payload, refused', [
    # a terabyte allocated from a few bytes of file
    (ReducePayload(bytes, (10**12, )), 'builtins.bytes'),
    (ReducePayload(bytes, ('text', 'utf-8')), 'builtins.bytes'),
    # bytes() as an argument of a forbidden call
    (ReducePayload(os.system, (b'', )), 'posix.system' if os.name == 'posix' else None),
    # the empty bytes object given attributes
    (ReducePayload(bytes, (), {'__class__': OrderedDict}), "<class 'bytes'>"),
    # bytes' methods reached through getattr
    (GetattrPayload(bytes, 'fromhex'), 'builtins.getattr'),
])
def test_bytes_builds_only_empty_bytes(tmp_path: Path, payload, refused) -> None:
    """``builtins.bytes`` is allowed for the ``bytes()`` of empty bytes (and
    empty arrays) in pickle protocol 2, and for nothing else."""
    path = tmp_path / 'bytes.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': payload}, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint_safely(path)
    if refused:
        assert f'offending global: {refused}' in str(error.value)
    torch.save({'x': ReducePayload(bytes, ())}, path)  # what pickle writes for b''
    assert load_checkpoint_safely(path)['x'] == b''


def test_the_result_of_bytes_is_not_callable(tmp_path: Path) -> None:
    """A hand-written pickle that calls what ``bytes()`` returned."""
    # PROTO 2, GLOBAL builtins.bytes, (), REDUCE -> b''; (), REDUCE -> b''(); STOP
    stream = b'\x80\x02c__builtin__\nbytes\n)R)R.'
    path = torch_file_with_pickle(tmp_path / 'call.pth', stream)
    with pytest.raises(UnsafeCheckpointError, match="offending global: b''"):
        load_checkpoint_safely(path)
    # Control: the same file with one call only is a valid checkpoint.
    path = torch_file_with_pickle(tmp_path / 'value.pth', b'\x80\x02c__builtin__\nbytes\n)R.')
    assert load_checkpoint_safely(path) == b''


# ---------------------------------------------------------------------------
# Missing / truncated / corrupt files
# ---------------------------------------------------------------------------
def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint_safely(path)


@pytest.mark.parametrize('zip_format', [True, False])
def test_truncated_checkpoint(tmp_path: Path, zip_format: bool) -> None:
    path = tmp_path / 'cut.pth'
    torch.save({'w': torch.randn(32, 32)}, path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])

    with pytest.raises(CorruptCheckpointError) as error:
        load_checkpoint_safely(path)
    message = str(error.value)
    assert str(path) in message and 'truncated or corrupt' in message
    assert 're-download' in message and 'earlier checkpoint' in message
    assert isinstance(error.value, RuntimeError)


@pytest.mark.parametrize('content', [b'', b'not a checkpoint' * 10])
def test_empty_or_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match='bad.pth'):
        load_checkpoint_safely(path)


def test_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    model = nn.Linear(2, 1)
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))

    loaded = load_checkpoint_safely(path)
    torch.testing.assert_close(loaded['weight'], model.weight.detach())

    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptCheckpointError, match='model.safetensors'):
        load_checkpoint_safely(path)


# ---------------------------------------------------------------------------
# Remote checkpoints: downloaded once, then loaded like local files.
# ---------------------------------------------------------------------------
def test_legacy_zip_download(tmp_path: Path, fake_server: dict) -> None:
    """Old torchvision releases: a zip holding one legacy-format file."""
    inner = tmp_path / 'weights.pth'
    torch.save({'w': torch.arange(3.)}, inner, _use_new_zipfile_serialization=False)
    archive = tmp_path / 'weights.zip'
    with zipfile.ZipFile(archive, 'w') as zf:
        zf.write(inner, 'weights.pth')
    url = 'https://example.com/weights.zip'
    fake_server['files'][url] = archive
    assert torch.equal(load_url_safely(url)['w'], torch.arange(3.))
