# Copyright (c) OpenMMLab. All rights reserved.
"""Tests for safe loading / atomic saving of checkpoints (mmsape.utils.checkpoint)."""
import contextlib
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner import checkpoint as mmengine_checkpoint
from torch import nn
from torch.utils.data import Dataset

import mmsape.utils.checkpoint as ckpt_utils
from mmsape.utils.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    allow_mmengine_checkpoint_types,
    atomic_save,
    format_state_dict_report,
    load_checkpoint_safely,
    load_from_http_safely,
    load_from_local_safely,
    mmengine_checkpoint_safe_globals,
    patch_mmengine_checkpointing,
    save_checkpoint_atomically,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_ITERS = 3


# ---------------------------------------------------------------------------
# Isolation: the allowlist and the MMEngine patch are process-wide state.
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def restored_global_state() -> Iterator[None]:
    """Undo ``patch_mmengine_checkpointing`` / allowlisting after a test."""
    bindings = {
        name: sys.modules[name].save_checkpoint
        for name in ckpt_utils._MODULES_BINDING_SAVE_CHECKPOINT if name in sys.modules
    }
    load_from_local = mmengine_checkpoint.load_from_local
    load_from_http = mmengine_checkpoint.load_from_http
    schemes = mmengine_checkpoint.CheckpointLoader._schemes
    original_save = ckpt_utils._mmengine_save_checkpoint
    safe_globals = torch.serialization.get_safe_globals()
    try:
        yield
    finally:
        for name, function in bindings.items():
            sys.modules[name].save_checkpoint = function
        mmengine_checkpoint.load_from_local = load_from_local
        mmengine_checkpoint.load_from_http = load_from_http
        mmengine_checkpoint.CheckpointLoader._schemes = schemes
        ckpt_utils._mmengine_save_checkpoint = original_save
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(safe_globals)


@pytest.fixture(autouse=True)
def _isolate_global_state() -> Iterator[None]:
    with restored_global_state():
        yield


# ---------------------------------------------------------------------------
# A tiny but complete MMEngine training run (CPU, a few iterations)
# ---------------------------------------------------------------------------
class ToyModel(BaseModel):

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor = None, mode: str = 'tensor'):
        out = self.linear(inputs).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((out - labels)**2).mean())
        return out


class ToyDataset(Dataset):
    # numpy array + tuples in the metainfo, as real datasets have (palettes, ...).
    metainfo = dict(classes=('a', 'b'), palette=[(1, 2, 3)], weights=np.arange(3.0))

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=torch.full((2, ), float(index)), labels=torch.tensor(float(index)))


def build_toy_runner(work_dir: str, experiment_name: str, resume: bool = False) -> Runner:
    return Runner(
        model=ToyModel(),
        work_dir=work_dir,
        experiment_name=experiment_name,
        train_dataloader=dict(
            dataset=ToyDataset(),
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[2], by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=MAX_ITERS),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=MAX_ITERS, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        resume=resume,
        log_level='WARNING')


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train 3 iterations with the patch applied; return the paths and save count."""
    work_dir = str(tmp_path_factory.mktemp('runner'))
    atomic_saves = []
    with restored_global_state(), pytest.MonkeyPatch.context() as mp:
        original_atomic_save = ckpt_utils.atomic_save

        def counting_atomic_save(obj, path):
            atomic_saves.append(path)
            original_atomic_save(obj, path)

        mp.setattr(ckpt_utils, 'atomic_save', counting_atomic_save)
        patch_mmengine_checkpointing()
        build_toy_runner(work_dir, 'toy_train').train()
    return dict(work_dir=work_dir, path=osp.join(work_dir, f'iter_{MAX_ITERS}.pth'),
                atomic_saves=atomic_saves)


def test_runner_saves_atomically(runner_checkpoint: dict) -> None:
    assert runner_checkpoint['atomic_saves'] == [runner_checkpoint['path']]
    assert not [name for name in os.listdir(runner_checkpoint['work_dir'])
                if name.endswith('.tmp')]


def test_runner_resume_restores_iteration_and_optimizer(runner_checkpoint: dict) -> None:
    saved = load_checkpoint_safely(runner_checkpoint['path'])
    patch_mmengine_checkpointing()
    runner = build_toy_runner(runner_checkpoint['work_dir'], 'toy_resume', resume=True)
    runner.train()  # resumes at iter 3 == max_iters, so no further updates happen

    assert runner.iter == MAX_ITERS
    optim_state = runner.optim_wrapper.optimizer.state_dict()
    assert len(optim_state['state']) == 2  # momentum buffers exist only after resuming
    for index, state in saved['optimizer']['state'].items():
        torch.testing.assert_close(optim_state['state'][index]['momentum_buffer'],
                                   state['momentum_buffer'])
    # MultiStepLR milestone at iter 2 was passed before saving: lr 0.01 -> 0.001.
    assert optim_state['param_groups'][0]['lr'] == pytest.approx(0.001)
    for key, value in saved['state_dict'].items():
        torch.testing.assert_close(runner.model.state_dict()[key], value)
    loss_history = runner.message_hub.get_scalar('train/loss')
    assert isinstance(loss_history, HistoryBuffer)
    assert len(loss_history.data[0]) == MAX_ITERS
    assert loss_history.mean() == pytest.approx(
        saved['message_hub']['log_scalars']['train/loss'].mean())


def test_runner_checkpoint_needs_the_allowlist(runner_checkpoint: dict) -> None:
    # A fresh interpreter, so this process's allowlist cannot leak in.
    script = textwrap.dedent("""
        import sys, torch
        try:
            torch.load(sys.argv[1], weights_only=True)
            print('PLAIN_LOADED')
        except Exception as error:
            print('PLAIN_REFUSED', type(error).__name__, error)
        from mmsape.utils.checkpoint import allow_mmengine_checkpoint_types
        allow_mmengine_checkpoint_types()
        checkpoint = torch.load(sys.argv[1], weights_only=True)
        print('ALLOWLISTED_LOADED iter', checkpoint['meta']['iter'])
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
    result = subprocess.run([sys.executable, '-c', script, runner_checkpoint['path']],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'PLAIN_REFUSED UnpicklingError' in result.stdout
    assert 'HistoryBuffer' in result.stdout or 'numpy' in result.stdout
    assert f'ALLOWLISTED_LOADED iter {MAX_ITERS}' in result.stdout


# ---------------------------------------------------------------------------
# The allowlist itself
# ---------------------------------------------------------------------------
def test_allowlist_holds_only_data_types() -> None:
    multiarray = ckpt_utils._numpy_multiarray_module()
    allowed_functions = {ckpt_utils._history_buffer_getattr, multiarray._reconstruct,
                         multiarray.scalar}
    for entry in mmengine_checkpoint_safe_globals():
        obj = entry[0] if isinstance(entry, tuple) else entry
        assert isinstance(obj, type) or obj in allowed_functions, entry
        assert obj is not getattr and obj is not np.dtypes.ObjectDType
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
class ShellPayload:
    """Pickles as ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


class ExecPayload:
    """Pickles as ``builtins.exec("open(<marker>, 'w').close()")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({str(self.marker)!r}, "w").close()', )


# torch reports builtins without the ``builtins.`` prefix.
@pytest.mark.parametrize('payload_cls, offending', [(ShellPayload, 'posix.system'),
                                                    (ExecPayload, 'exec')])
def test_malicious_pickle_is_refused(tmp_path: Path, payload_cls: type,
                                     offending: str) -> None:
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': payload_cls(marker)}, path)

    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint_safely(path)
    message = str(error.value)
    assert str(path) in message
    assert 'not plain weights' in message and 'refused for safety' in message
    if os.name == 'posix':  # os.system lives in ``nt`` on Windows
        assert f'offending global: {offending}' in message
    assert not marker.exists()

    # Through MMEngine's own loader after the patch, too.
    patch_mmengine_checkpointing()
    with pytest.raises(UnsafeCheckpointError):
        mmengine_checkpoint._load_checkpoint(str(path))
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

    patch_mmengine_checkpointing()
    with pytest.raises(CorruptCheckpointError, match='cut.pth'):
        mmengine_checkpoint._load_checkpoint(str(path))


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

    patch_mmengine_checkpointing()
    other = nn.Linear(2, 1)
    mmengine_checkpoint.load_checkpoint(other, str(path), strict=True)
    torch.testing.assert_close(other.weight, model.weight)

    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptCheckpointError, match='model.safetensors'):
        load_checkpoint_safely(path)


# ---------------------------------------------------------------------------
# Atomic saving
# ---------------------------------------------------------------------------
def test_atomic_save_keeps_old_file_when_save_crashes(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / 'sub' / 'latest.pth'
    atomic_save({'version': 1, 'w': torch.arange(4.0)}, path)  # creates sub/
    assert os.listdir(path.parent) == ['latest.pth']  # no temp files on success

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 half of a checkpoint')
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(torch, 'save', crashing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({'version': 2, 'w': torch.zeros(4)}, path)
    monkeypatch.undo()

    old = load_checkpoint_safely(path)
    assert old['version'] == 1
    torch.testing.assert_close(old['w'], torch.arange(4.0))
    assert os.listdir(path.parent) == ['latest.pth']  # the partial temp file was removed


def test_atomic_save_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / 'ckpt.pth'
    atomic_save({'version': 0, 'w': torch.zeros(1)}, path)
    script = textwrap.dedent("""
        import sys, torch
        from mmsape.utils.checkpoint import atomic_save
        for version in range(1, 100):
            weights = torch.full((8_000_000, ), float(version))  # 32 MB per save
            print('begin', version, flush=True)
            atomic_save({'version': version, 'w': weights}, sys.argv[1])
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
    child = subprocess.Popen([sys.executable, '-c', script, str(path)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in child.stdout:
            if line.strip() == 'begin 3':
                break
        # Kill while the third save is being written to its temp file.
        deadline = time.monotonic() + 30
        while not any(name.endswith('.tmp') for name in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, 'child never started writing'
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)

    loaded = load_checkpoint_safely(path)
    assert loaded['version'] in (2, 3)  # the last complete save, never a torn one
    assert bool((loaded['w'] == loaded['version']).all())


def test_save_checkpoint_routing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_mmengine_checkpointing()
    delegated = []
    monkeypatch.setattr(ckpt_utils, '_mmengine_save_checkpoint',
                        lambda *args, **kwargs: delegated.append(args[1]))

    local = tmp_path / 'local.pth'
    save_checkpoint_atomically({'meta': {}}, str(local))
    assert local.exists() and delegated == []

    save_checkpoint_atomically({'meta': {}}, 'pavi://project/model.pth')
    save_checkpoint_atomically({'meta': {}}, 's3://bucket/model.pth')
    save_checkpoint_atomically({'meta': {}}, str(tmp_path / 'old_api.pth'),
                               file_client_args=dict(backend='disk'))
    assert delegated == ['pavi://project/model.pth', 's3://bucket/model.pth',
                         str(tmp_path / 'old_api.pth')]


def test_patch_is_idempotent() -> None:
    import mmengine.runner
    import mmengine.runner.runner
    # MMEngine's own function, also when earlier in-process runs (tools, e2e
    # tests) have already applied the patch.
    mmengine_save = mmengine_checkpoint.save_checkpoint
    if mmengine_save is save_checkpoint_atomically:
        mmengine_save = ckpt_utils._mmengine_save_checkpoint
    pavi_loader = mmengine_checkpoint.CheckpointLoader._get_checkpoint_loader('pavi://x/y.pth')

    patch_mmengine_checkpointing()
    patch_mmengine_checkpointing()

    assert ckpt_utils._mmengine_save_checkpoint is mmengine_save
    for module in (mmengine_checkpoint, mmengine.runner, mmengine.runner.runner):
        assert module.save_checkpoint is save_checkpoint_atomically
    loader = mmengine_checkpoint.CheckpointLoader._get_checkpoint_loader
    assert loader('/some/file.pth') is load_from_local_safely
    assert loader('https://x/y.pth') is load_from_http_safely
    assert loader('http://x/y.pth') is load_from_http_safely
    assert mmengine_checkpoint.load_from_http is load_from_http_safely
    assert loader('pavi://x/y.pth') is pavi_loader  # other schemes untouched


# ---------------------------------------------------------------------------
# Remote (http/https) checkpoints: downloaded, then loaded like local files.
# No network: ``torch.hub.download_url_to_file`` copies files of a fake server.
# ---------------------------------------------------------------------------
@pytest.fixture
def fake_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``{url: local file}`` served by a fake ``download_url_to_file``; the hub
    cache is ``tmp_path/hub``. ``downloads`` records every fetched URL."""
    served, downloads = {}, []

    def download_url_to_file(url, dst, hash_prefix=None, progress=True):
        assert url in served, f'unexpected download of {url}'
        downloads.append(url)
        shutil.copyfile(served[url], dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download_url_to_file)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    return dict(files=served, downloads=downloads, cache=tmp_path / 'hub' / 'checkpoints')


def record_weights_only(monkeypatch: pytest.MonkeyPatch) -> list:
    """The ``weights_only`` argument of every ``torch.load`` call."""
    calls = []
    original_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return original_load(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', recording_load)
    return calls


def test_http_checkpoint_is_downloaded_once_and_loaded_safely(
        tmp_path: Path, fake_server: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ToyModel()
    path = tmp_path / 'served.pth'
    torch.save({'state_dict': source.state_dict(), 'meta': {'epoch': 1}}, path)
    url = 'https://download.example.com/toy/toy_20240101-0123abcd.pth'
    fake_server['files'][url] = path
    patch_mmengine_checkpointing()
    weights_only = record_weights_only(monkeypatch)

    for _ in range(2):
        model = ToyModel()
        mmengine_checkpoint.load_checkpoint(model, url, map_location='cpu')
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value)
    assert fake_server['downloads'] == [url]  # the second load reads the cache
    assert (fake_server['cache'] / 'toy_20240101-0123abcd.pth').is_file()
    assert weights_only == [True, True]


def test_http_runner_checkpoint_keeps_its_training_state(runner_checkpoint: dict,
                                                         fake_server: dict) -> None:
    """Full Runner checkpoints (message hub, numpy, optimizer) need the allowlist."""
    url = 'http://example.com/work_dirs/iter_3.pth'
    fake_server['files'][url] = runner_checkpoint['path']
    patch_mmengine_checkpointing()
    checkpoint = mmengine_checkpoint.CheckpointLoader.load_checkpoint(url)
    assert checkpoint['meta']['iter'] == MAX_ITERS
    assert isinstance(checkpoint['message_hub']['log_scalars']['train/loss'], HistoryBuffer)


@pytest.mark.parametrize('name_kind', ['https', 'open-mmlab', 'mmcls'])
def test_malicious_download_is_refused(tmp_path: Path, fake_server: dict,
                                       name_kind: str) -> None:
    """Also for the names MMEngine resolves to URLs (``open-mmlab://``, ...)."""
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': ShellPayload(marker)}, evil)
    name, url = {
        'https': ('https://example.com/evil.pth', 'https://example.com/evil.pth'),
        'open-mmlab': ('open-mmlab://vgg16_caffe',
                       mmengine_checkpoint.get_external_models()['vgg16_caffe']),
        'mmcls': ('mmcls://vgg11', mmengine_checkpoint.get_mmcls_models()['vgg11']),
    }[name_kind]
    fake_server['files'][url] = evil
    patch_mmengine_checkpointing()

    with pytest.raises(UnsafeCheckpointError) as error:
        mmengine_checkpoint._load_checkpoint(name)
    message = str(error.value)
    assert 'refused for safety' in message and f'downloaded from {url}' in message
    assert str(fake_server['cache']) in message  # names the cached file
    assert fake_server['downloads'] == [url]
    assert not marker.exists()


def test_unpatched_mmengine_runs_code_from_downloads(tmp_path: Path,
                                                     fake_server: dict) -> None:
    """Control: the hole the patch closes is real with these versions."""
    from mmengine.utils.dl_utils import load_url  # what MMEngine's load_from_http calls
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'x': ShellPayload(marker)}, evil)
    fake_server['files']['https://example.com/evil.pth'] = evil
    load_url('https://example.com/evil.pth', model_dir=str(tmp_path / 'unsafe_cache'))
    assert marker.exists()


@pytest.mark.parametrize('content', [b'', b'<html>404 Not Found</html>'])
def test_corrupt_download_names_url_and_cache(tmp_path: Path, fake_server: dict,
                                              content: bytes) -> None:
    url = 'https://example.com/models/broken.pth'
    (tmp_path / 'broken.pth').write_bytes(content)
    fake_server['files'][url] = tmp_path / 'broken.pth'
    patch_mmengine_checkpointing()
    with pytest.raises(CorruptCheckpointError) as error:
        mmengine_checkpoint._load_checkpoint(url)
    message = str(error.value)
    assert str(fake_server['cache'] / 'broken.pth') in message
    assert f'downloaded from {url}' in message and 'Delete the cached file' in message


def test_legacy_zip_download(tmp_path: Path, fake_server: dict) -> None:
    """Old torchvision releases: a zip holding one legacy-format file."""
    inner = tmp_path / 'weights.pth'
    torch.save({'w': torch.arange(3.)}, inner, _use_new_zipfile_serialization=False)
    archive = tmp_path / 'weights.zip'
    with zipfile.ZipFile(archive, 'w') as zf:
        zf.write(inner, 'weights.pth')
    url = 'https://example.com/weights.zip'
    fake_server['files'][url] = archive
    assert torch.equal(load_from_http_safely(url)['w'], torch.arange(3.))


# ---------------------------------------------------------------------------
# Report formatting
# ---------------------------------------------------------------------------
def test_format_state_dict_report() -> None:
    report = format_state_dict_report(
        missing=['neck.b', 'head.w'],
        unexpected={'aux.w': (3, )},
        resized=[('pos_embed', (1, 197, 768), torch.Size([1, 50, 768]))])
    assert report == '\n'.join([
        'key       | status     | detail',
        '----------+------------+-----------------------------------------------',
        'head.w    | missing    | absent from checkpoint',
        'neck.b    | missing    | absent from checkpoint',
        'aux.w     | unexpected | checkpoint (3,)',
        'pos_embed | resized    | checkpoint (1, 197, 768) -> model (1, 50, 768)',
    ])
    assert format_state_dict_report([], [], {}) == (
        'State dict matches: no missing, unexpected or resized keys.')
