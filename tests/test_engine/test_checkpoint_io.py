# Copyright (c) OpenMMLab. All rights reserved.
"""Importing mmsape.engine makes MMEngine save atomically and load safely, by
registration (file backend, checkpoint loader schemes, a checkpoint hook): no
attribute of an MMEngine module is reassigned."""
import builtins
import errno
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import mmengine.runner
import mmengine.runner.runner
import numpy as np
import pytest
import torch
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner import checkpoint as mmengine_checkpoint
from torch import nn
from torch.utils.data import Dataset

from mmsape.engine import fileio as engine_fileio
from mmsape.engine.checkpoint_loaders import (
    load_from_http_safely,
    load_from_local_safely,
    load_from_mmcls_safely,
    load_from_openmmlab_safely,
    load_from_torchvision_safely,
)
from mmsape.engine.fileio import AtomicLocalBackend
from mmsape.engine.hooks.checkpoint_hook import save_with_staged_pointer
from mmsape.utils import CorruptCheckpointError, UnsafeCheckpointError, load_checkpoint_safely

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_ITERS = 3
CheckpointLoader = mmengine_checkpoint.CheckpointLoader
#: Schemes whose MMEngine loaders stay: they call torch.load with its default
#: weights_only=True (torch >= 2.6), which the process-wide allowlist completes.
MMENGINE_LOADERS_KEPT = {'pavi://', r'(\S+\:)?s3://', r'(\S+\:)?petrel://'}


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter, so nothing imported here helps."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


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


def build_toy_runner(work_dir: str, experiment_name: str, resume: bool = False,
                     checkpoint_hook: str = 'CheckpointHook',
                     checkpoint_interval: int = MAX_ITERS) -> Runner:
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
            # By default MMEngine's own hook: the registered backend makes its saves atomic.
            checkpoint=dict(type=checkpoint_hook, interval=checkpoint_interval, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        resume=resume,
        log_level='WARNING')


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train 3 iterations; return the paths and the atomic writes made."""
    work_dir = str(tmp_path_factory.mktemp('runner'))
    atomic_saves = []
    with pytest.MonkeyPatch.context() as mp:
        original_atomic_write = engine_fileio.atomic_write

        def counting_atomic_write(data, path):
            atomic_saves.append(os.fspath(path))
            original_atomic_write(data, path)

        mp.setattr(engine_fileio, 'atomic_write', counting_atomic_write)
        build_toy_runner(work_dir, 'toy_train').train()
    return dict(work_dir=work_dir, path=osp.join(work_dir, f'iter_{MAX_ITERS}.pth'),
                atomic_saves=atomic_saves)


def test_runner_saves_atomically(runner_checkpoint: dict) -> None:
    assert runner_checkpoint['atomic_saves'] == [runner_checkpoint['path']]
    assert not [name for name in os.listdir(runner_checkpoint['work_dir'])
                if name.endswith('.tmp')]


def test_runner_resume_restores_iteration_and_optimizer(runner_checkpoint: dict) -> None:
    saved = load_checkpoint_safely(runner_checkpoint['path'])
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
    result = fresh_python(f"""
        import torch
        path = {runner_checkpoint['path']!r}
        try:
            torch.load(path, weights_only=True)
            print('PLAIN_LOADED')
        except Exception as error:
            print('PLAIN_REFUSED', type(error).__name__, error)
        from mmsape.utils import allow_mmengine_checkpoint_types
        allow_mmengine_checkpoint_types()
        checkpoint = torch.load(path, weights_only=True)
        print('ALLOWLISTED_LOADED iter', checkpoint['meta']['iter'])
    """)
    assert result.returncode == 0, result.stderr
    assert 'PLAIN_REFUSED UnpicklingError' in result.stdout
    assert 'HistoryBuffer' in result.stdout or 'numpy' in result.stdout
    assert f'ALLOWLISTED_LOADED iter {MAX_ITERS}' in result.stdout


@pytest.mark.parametrize('payload', [HistoryBuffer(), np.array([]), b''],
                         ids=['empty_history_buffer', 'empty_array', 'empty_bytes'])
def test_empty_values_load_through_mmengine(tmp_path: Path, payload) -> None:
    """Pickle protocol 2 writes each of these with a call of builtins.bytes: a
    full checkpoint holding one (an empty message-hub buffer, a hook's
    ``np.array([])``) is honest and loads."""
    path = tmp_path / 'empty.pth'
    state_dict = nn.Linear(2, 3).state_dict()
    mmengine_checkpoint.save_checkpoint(
        {'meta': {'iter': 1, 'payload': payload}, 'state_dict': state_dict}, str(path))
    with zipfile.ZipFile(path) as archive:
        pickled = next(archive.read(name) for name in archive.namelist()
                       if name.endswith('/data.pkl'))
    assert b'c__builtin__\nbytes\n' in pickled  # the call this test is about

    loaded = mmengine_checkpoint._load_checkpoint(str(path), map_location='cpu')
    value = loaded['meta']['payload']
    if isinstance(payload, HistoryBuffer):
        assert isinstance(value, HistoryBuffer) and value.max_length == payload.max_length
        for logged, expected in zip(value.data, payload.data):
            np.testing.assert_array_equal(logged, expected)
            assert logged.dtype == expected.dtype
        value.update(2.0)  # still a working buffer
        assert value.mean() == 2.0
    elif isinstance(payload, np.ndarray):
        assert isinstance(value, np.ndarray)
        assert value.shape == (0, ) and value.dtype == payload.dtype
    else:
        assert value == b'' and type(value) is bytes
    for key, tensor in state_dict.items():
        torch.testing.assert_close(loaded['state_dict'][key], tensor)


# ---------------------------------------------------------------------------
# What the import registers, and that nothing of MMEngine's is rebound
# ---------------------------------------------------------------------------
def test_mmengine_is_configured_by_registration_only() -> None:
    loader = CheckpointLoader._get_checkpoint_loader
    assert loader('/some/file.pth') is load_from_local_safely
    assert loader('https://x/y.pth') is load_from_http_safely
    assert loader('http://x/y.pth') is load_from_http_safely
    assert loader('torchvision://resnet18') is load_from_torchvision_safely
    assert loader('modelzoo://resnet18') is load_from_torchvision_safely
    assert loader('open-mmlab://vgg16_caffe') is load_from_openmmlab_safely
    assert loader('openmmlab://vgg16_caffe') is load_from_openmmlab_safely
    assert loader('mmcls://vgg11') is load_from_mmcls_safely
    assert loader('pavi://x/y.pth') is mmengine_checkpoint.load_from_pavi  # left alone
    assert type(get_file_backend('/some/file.pth')) is AtomicLocalBackend
    assert type(get_file_backend('/x', backend_args={'backend': 'local'})) is AtomicLocalBackend

    # MMEngine's module-level functions are still its own.
    for module, name in [(mmengine_checkpoint, 'save_checkpoint'),
                         (mmengine_checkpoint, 'load_from_local'),
                         (mmengine_checkpoint, 'load_from_http'),
                         (mmengine.runner, 'save_checkpoint'),
                         (mmengine.runner.runner, 'save_checkpoint')]:
        assert getattr(module, name).__module__ == 'mmengine.runner.checkpoint', (module, name)
    assert mmengine.runner.runner.save_checkpoint is mmengine_checkpoint.save_checkpoint
    assert LocalBackend.put.__qualname__ == 'LocalBackend.put'


def test_every_loader_is_safe_or_known() -> None:
    """Fails when MMEngine adds a scheme: it must then be checked and added."""
    schemes = CheckpointLoader._schemes
    kept = {prefix for prefix, loader in schemes.items()
            if loader.__module__ != 'mmsape.engine.checkpoint_loaders'}
    assert kept == MMENGINE_LOADERS_KEPT
    for prefix in kept:
        assert schemes[prefix].__module__ == 'mmengine.runner.checkpoint'


def test_kept_loaders_torch_load_is_safe(runner_checkpoint: dict, tmp_path: Path,
                                         write_malicious_checkpoint) -> None:
    """pavi / ceph call ``torch.load(file, map_location=...)``: with the allowlist
    registered at import, Runner checkpoints load and code is refused."""
    checkpoint = torch.load(runner_checkpoint['path'], map_location='cpu')
    assert checkpoint['meta']['iter'] == MAX_ITERS
    marker = tmp_path / 'pwned'
    evil = write_malicious_checkpoint(tmp_path / 'evil.pth', marker)
    with pytest.raises(Exception, match='Weights only load failed'):
        torch.load(evil, map_location='cpu')
    assert not marker.exists()


def test_save_checkpoint_routing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local paths reach the atomic backend; every other target keeps MMEngine's path."""
    atomic = []
    original_atomic_write = engine_fileio.atomic_write

    def recording_atomic_write(data, path):
        atomic.append(os.fspath(path))
        original_atomic_write(data, path)

    monkeypatch.setattr(engine_fileio, 'atomic_write', recording_atomic_write)
    save_checkpoint = mmengine_checkpoint.save_checkpoint

    local = tmp_path / 'local.pth'
    save_checkpoint({'meta': {}}, str(local))
    named = tmp_path / 'named_backend.pth'
    save_checkpoint({'meta': {}}, str(named), backend_args=dict(backend='local'))
    assert local.exists() and named.exists()
    assert atomic == [str(local), str(named)]

    with pytest.raises(ImportError, match='pavi'):  # MMEngine's own pavi branch
        save_checkpoint({'meta': {}}, 'pavi://project/model.pth')
    with pytest.raises(ImportError, match='petrel_client'):  # MMEngine's PetrelBackend
        save_checkpoint({'meta': {}}, 's3://bucket/model.pth')
    old_api = tmp_path / 'old_api.pth'  # the deprecated FileClient route
    save_checkpoint({'meta': {}}, str(old_api), file_client_args=dict(backend='disk'))
    assert old_api.exists()
    assert atomic == [str(local), str(named)]


def test_backend_cached_before_the_import_is_replaced(tmp_path: Path) -> None:
    """``mmengine.fileio.put`` caches its backend; one cached before mmsape.engine
    was imported must not keep writing in place."""
    result = fresh_python(f"""
        import os, json
        from mmengine import fileio
        path = {str(tmp_path / 'file.txt')!r}
        fileio.put(b'first', path)  # caches a plain LocalBackend
        plain_inode = os.stat(path).st_ino
        fileio.put(b'second', path)
        in_place = os.stat(path).st_ino == plain_inode
        import mmsape.engine
        backend = fileio.get_file_backend(path, enable_singleton=True)
        before = os.stat(path).st_ino
        fileio.put(b'third', path)
        after_put = os.stat(path).st_ino
        fileio.put_text('fourth', path)
        print(json.dumps(dict(backend=type(backend).__name__, in_place=in_place,
                              put_replaced=after_put != before,
                              put_text_replaced=os.stat(path).st_ino != after_put,
                              content=open(path).read())))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == dict(backend='AtomicLocalBackend', in_place=True, put_replaced=True,
                          put_text_replaced=True, content='fourth')


# ---------------------------------------------------------------------------
# Local files through MMEngine's loaders
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('payload', ['os.system', 'exec'])
def test_mmengine_loader_refuses_malicious_pickle(tmp_path: Path, write_malicious_checkpoint,
                                                  payload: str) -> None:
    marker = tmp_path / 'pwned'
    path = write_malicious_checkpoint(tmp_path / 'evil.pth', marker, payload)
    with pytest.raises(UnsafeCheckpointError):
        mmengine_checkpoint._load_checkpoint(str(path))
    assert not marker.exists()


def test_mmengine_loader_names_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / 'cut.pth'
    torch.save({'w': torch.randn(32, 32)}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match='cut.pth'):
        mmengine_checkpoint._load_checkpoint(str(path))


def test_mmengine_loader_reads_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    model = nn.Linear(2, 1)
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = nn.Linear(2, 1)
    mmengine_checkpoint.load_checkpoint(other, str(path), strict=True)
    torch.testing.assert_close(other.weight, model.weight)


# ---------------------------------------------------------------------------
# Remote (http/https) checkpoints: downloaded, then loaded like local files.
# No network: ``torch.hub.download_url_to_file`` copies files of a fake server.
# ---------------------------------------------------------------------------
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
    checkpoint = CheckpointLoader.load_checkpoint(url)
    assert checkpoint['meta']['iter'] == MAX_ITERS
    assert isinstance(checkpoint['message_hub']['log_scalars']['train/loss'], HistoryBuffer)


@pytest.mark.parametrize('name_kind', ['https', 'open-mmlab', 'mmcls', 'torchvision'])
def test_malicious_download_is_refused(tmp_path: Path, fake_server: dict,
                                       write_malicious_checkpoint, name_kind: str) -> None:
    """Also for the names MMEngine resolves to URLs (``open-mmlab://``, ...)."""
    marker = tmp_path / 'pwned'
    evil = write_malicious_checkpoint(tmp_path / 'evil.pth', marker)
    name, url = {
        'https': ('https://example.com/evil.pth', 'https://example.com/evil.pth'),
        'open-mmlab': ('open-mmlab://vgg16_caffe',
                       mmengine_checkpoint.get_external_models()['vgg16_caffe']),
        'mmcls': ('mmcls://vgg11', mmengine_checkpoint.get_mmcls_models()['vgg11']),
        'torchvision': ('torchvision://resnet18',
                        mmengine_checkpoint.get_torchvision_models()['resnet18']),
    }[name_kind]
    fake_server['files'][url] = evil

    with pytest.raises(UnsafeCheckpointError) as error:
        mmengine_checkpoint._load_checkpoint(name)
    message = str(error.value)
    assert 'refused for safety' in message and f'downloaded from {url}' in message
    assert str(fake_server['cache']) in message  # names the cached file
    assert fake_server['downloads'] == [url]
    assert not marker.exists()


def test_mmcls_names_give_backbone_weights(tmp_path: Path, fake_server: dict) -> None:
    """``mmcls://`` keeps MMEngine's conversion: backbone keys without the prefix."""
    url = mmengine_checkpoint.get_mmcls_models()['vgg11']
    served = tmp_path / 'vgg11.pth'
    torch.save({'state_dict': {'backbone.conv.weight': torch.ones(2),
                               'head.fc.weight': torch.zeros(2)}}, served)
    fake_server['files'][url] = served
    checkpoint = mmengine_checkpoint._load_checkpoint('mmcls://vgg11')
    assert list(checkpoint['state_dict']) == ['conv.weight']


def test_open_mmlab_local_file_is_loaded_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                write_malicious_checkpoint) -> None:
    """``$MMENGINE_HOME/open_mmlab.json`` may map a name to a file under that folder."""
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path))
    (tmp_path / 'open_mmlab.json').write_text(json.dumps(
        {'mine': 'models/mine.pth', 'evil': 'models/evil.pth'}))
    (tmp_path / 'models').mkdir()
    torch.save({'state_dict': {'w': torch.arange(2.)}}, tmp_path / 'models' / 'mine.pth')
    marker = tmp_path / 'pwned'
    write_malicious_checkpoint(tmp_path / 'models' / 'evil.pth', marker)

    loaded = mmengine_checkpoint._load_checkpoint('open-mmlab://mine')
    assert torch.equal(loaded['state_dict']['w'], torch.arange(2.))
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        mmengine_checkpoint._load_checkpoint('openmmlab://evil')
    assert not marker.exists()


def test_mmengine_download_loader_runs_code(tmp_path: Path, fake_server: dict,
                                            write_malicious_checkpoint) -> None:
    """Control: the hole the registered loaders close is real with these versions."""
    from mmengine.utils.dl_utils import load_url  # what MMEngine's load_from_http calls
    marker = tmp_path / 'pwned'
    evil = write_malicious_checkpoint(tmp_path / 'evil.pth', marker)
    fake_server['files']['https://example.com/evil.pth'] = evil
    load_url('https://example.com/evil.pth', model_dir=str(tmp_path / 'unsafe_cache'))
    assert marker.exists()


@pytest.mark.parametrize('content', [b'', b'<html>404 Not Found</html>'])
def test_corrupt_download_names_url_and_cache(tmp_path: Path, fake_server: dict,
                                              content: bytes) -> None:
    url = 'https://example.com/models/broken.pth'
    (tmp_path / 'broken.pth').write_bytes(content)
    fake_server['files'][url] = tmp_path / 'broken.pth'
    with pytest.raises(CorruptCheckpointError) as error:
        mmengine_checkpoint._load_checkpoint(url)
    message = str(error.value)
    assert str(fake_server['cache'] / 'broken.pth') in message
    assert f'downloaded from {url}' in message and 'Delete the cached file' in message


# ---------------------------------------------------------------------------
# The last_checkpoint pointer (mmsape.AtomicCheckpointHook)
# ---------------------------------------------------------------------------
class PointerWatcher(Hook):
    """Records ``(inode, content)`` of ``last_checkpoint`` after every iteration."""
    priority = 'LOWEST'  # after the checkpoint hook (VERY_LOW)

    def __init__(self) -> None:
        self.records = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        pointer = Path(runner.work_dir) / 'last_checkpoint'
        self.records.append((pointer.stat().st_ino, pointer.read_text()))


def leftovers(work_dir: str) -> list:
    """Temporary files or staging folders left in ``work_dir``."""
    return [name for name in os.listdir(work_dir)
            if name.endswith('.tmp') or name.startswith('.last_checkpoint')]


@pytest.mark.parametrize('hook, atomic', [('mmsape.AtomicCheckpointHook', True),
                                          ('CheckpointHook', False)])
def test_pointer_is_replaced_not_rewritten(tmp_path: Path, hook: str, atomic: bool) -> None:
    """Each save renames a new pointer file into place (a new inode each time);
    MMEngine's hook, the control, rewrites the same file in place."""
    runner = build_toy_runner(str(tmp_path), f'pointer_{atomic}', checkpoint_hook=hook,
                              checkpoint_interval=1)
    watcher = PointerWatcher()
    runner.register_hook(watcher)
    runner.train()

    inodes, contents = zip(*watcher.records)
    assert list(contents) == [osp.join(str(tmp_path), f'iter_{i}.pth')
                              for i in range(1, MAX_ITERS + 1)]
    changed = [before != after for before, after in zip(inodes, inodes[1:])]
    assert changed == [atomic] * (MAX_ITERS - 1)
    assert leftovers(str(tmp_path)) == []


@pytest.mark.parametrize('hook, atomic', [('mmsape.AtomicCheckpointHook', True),
                                          ('CheckpointHook', False)])
def test_failed_pointer_write_keeps_the_previous_pointer(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         hook: str, atomic: bool) -> None:
    """The disk fills up right after MMEngine opened ``last_checkpoint`` for the
    second time ('w' truncates it): with MMEngine's hook, the control, the pointer
    is left empty and ``resume=True`` finds nothing; with mmsape's it still names
    the first, complete checkpoint."""
    real_open = builtins.open
    opened = []

    def open_then_fail(file, mode='r', *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if osp.basename(os.fspath(file)) == 'last_checkpoint' and 'w' in mode:
            opened.append(file)
            if len(opened) == 2:
                handle.close()
                raise OSError(errno.ENOSPC, 'No space left on device', file)
        return handle

    runner = build_toy_runner(str(tmp_path), f'pointer_fault_{atomic}', checkpoint_hook=hook,
                              checkpoint_interval=1)
    monkeypatch.setattr(builtins, 'open', open_then_fail)
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    monkeypatch.undo()

    assert (tmp_path / 'iter_2.pth').is_file()
    pointer = mmengine_checkpoint.find_latest_checkpoint(str(tmp_path))
    if not atomic:
        assert pointer == ''  # the hole: resume=True has no checkpoint to load
        return
    assert pointer == str(tmp_path / 'iter_1.pth')
    assert load_checkpoint_safely(pointer)['meta']['iter'] == 1
    assert leftovers(str(tmp_path)) == []


def test_mmengine_writes_the_pointer_where_the_hook_expects(tmp_path: Path) -> None:
    """Fails when MMEngine's CheckpointHook changes how it writes the pointer:
    ``save_with_staged_pointer`` relies on ``runner.work_dir`` naming its folder."""
    runner = build_toy_runner(str(tmp_path), 'pointer_staging')
    hook = CheckpointHook(interval=1, by_epoch=False, save_optimizer=False,
                          save_param_scheduler=False)
    hook.before_train(runner)
    pointer = save_with_staged_pointer(hook._save_checkpoint_with_step, runner, 1,
                                       dict(epoch=0, iter=1))
    assert pointer == str(tmp_path / 'iter_1.pth')
    assert load_checkpoint_safely(pointer)['meta']['iter'] == 1
    assert not (tmp_path / 'last_checkpoint').exists()  # MMEngine wrote into staging
    assert leftovers(str(tmp_path)) == []


def test_missing_staged_pointer_is_an_error(tmp_path: Path) -> None:
    runner = build_toy_runner(str(tmp_path), 'pointer_missing')
    with pytest.raises(RuntimeError, match="no longer writes 'last_checkpoint'"):
        save_with_staged_pointer(lambda runner, step, meta: None, runner, 1, {})
    assert leftovers(str(tmp_path)) == []
