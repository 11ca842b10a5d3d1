"""mmsape.apis.preflight: the data and checkpoints a run reads are checked on
the config, before anything is built, for the full configs of the three tasks.

The datasets are the generated demo layouts (COCO, ADE20K, ImageNet), copied so
that a test can take parts away, and reached through the README's documented
``--cfg-options``; checkpoint URLs are served from 127.0.0.1 (the ``http_server``
fixture, which also refuses any other host).
"""
import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmsape.apis import (
    MissingCheckpointError,
    MissingDataError,
    MissingInputError,
    build_test_runner,
    build_train_runner,
    check_run_inputs,
    find_missing_inputs,
    load_config,
)
from mmsape.testing.demo_data import ensure_demo_data

from builders import ROOT, readme_command

DEIT_FILE = 'deit_small_patch16_224-cd65a155.pth'
#: task -> (full config, README section, README variable, demo layout, dataset type)
TASKS = {
    'seg': ('configs/upernet/upernet_vit-s16-sape2_mln_8xb2-160k_ade20k-512x512.py',
            'ADE20K: semantic segmentation', 'ADE', 'ade/ADEChallengeData2016', 'ADE20KDataset'),
    'det': ('configs/mask_rcnn/mask-rcnn_vit-s16-sape2_simplefpn_lsj-100e_coco.py',
            'COCO: detection and instance segmentation', 'COCO', 'coco', 'CocoDataset'),
    'cls': ('configs/vit_cls/vit-s16-sape2_4xb256-300e_in1k.py', 'ImageNet: classification',
            'IMAGENET', 'imagenet', 'ImageNet'),
}
#: task -> the training set's key in the config (Mask R-CNN wraps it in a RepeatDataset)
TRAIN_SET = {'seg': 'train_dataloader.dataset', 'det': 'train_dataloader.dataset.dataset',
             'cls': 'train_dataloader.dataset'}


@pytest.fixture(scope='module')
def demo_root() -> Path:
    return ensure_demo_data(ROOT / 'data' / 'demo')


@pytest.fixture
def layouts(demo_root, tmp_path) -> Path:
    """A copy of the generated COCO, ADE20K and ImageNet layouts, to take parts from."""
    for name in ('ade', 'coco', 'imagenet'):
        shutil.copytree(demo_root / name, tmp_path / 'data' / name)
    return tmp_path / 'data'


@pytest.fixture
def cached_deit(http_server) -> Path:
    """DeiT-S's file where the config's URL is downloaded to (what an offline
    machine does with it), so that no check needs the network."""
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    cache.mkdir(parents=True)
    torch.save({'model': {}}, cache / DEIT_FILE)
    return cache / DEIT_FILE


def documented_options(task: str, root: Path) -> dict:
    """The ``--cfg-options`` of the README command that trains the task, with
    its data folder variable set to ``root``."""
    config, section, variable, _, _ = TASKS[task]
    script = 'tools/dist_train.sh' if task == 'cls' else 'tools/train.py'
    words = readme_command(section, script, **{variable: str(root)})
    assert words[words.index(script) + 1] == config
    options = words[words.index('--cfg-options') + 1:]
    return dict(option.split('=', 1) for option in options)


def task_config(task: str, root: Path, **extra) -> Config:
    config = TASKS[task][0]
    return load_config(str(ROOT / config), {**documented_options(task, root), **extra})


def messages(error: pytest.ExceptionInfo) -> str:
    return str(error.value)


# --- the documented layouts pass ------------------------------------------------------
@pytest.mark.parametrize('task', sorted(TASKS))
def test_documented_override_on_the_generated_layout_passes(task, layouts, cached_deit):
    cfg = task_config(task, layouts / TASKS[task][3])
    assert find_missing_inputs(cfg, 'train') == []
    assert find_missing_inputs(cfg, 'test') == []
    check_run_inputs(cfg, 'train')


# --- missing data ---------------------------------------------------------------------
@pytest.mark.parametrize('task', sorted(TASKS))
def test_missing_data_root_names_dataset_layout_readme_and_fix(task, tmp_path, cached_deit):
    root = tmp_path / 'nowhere' / Path(TASKS[task][3]).name
    cfg = task_config(task, root)
    with pytest.raises(MissingDataError) as error:
        check_run_inputs(cfg, 'train')
    assert isinstance(error.value, FileNotFoundError)
    message = messages(error)
    dataset_type, anchor = TASKS[task][4], {
        'seg': 'README.md#ade20k-semantic-segmentation',
        'det': 'README.md#coco-detection-and-instance-segmentation',
        'cls': 'README.md#imagenet-classification'}[task]
    # the training and validation sets (and COCO's evaluator), nothing else
    keys = [item.key for item in error.value.missing]
    expected = [TRAIN_SET[task], 'val_dataloader.dataset']
    assert keys == expected + (['val_evaluator'] if task == 'det' else [])
    assert f'{TRAIN_SET[task]} ({dataset_type}, ' in message
    assert f'data_root {root} does not exist' in message
    assert f'--cfg-options {TRAIN_SET[task]}.data_root=/path/to/{root.name}' in message
    assert anchor in message
    layout = {'seg': [f'{root}/images/training/*.jpg', f'{root}/annotations/training/*.png'],
              'det': [f'{root}/annotations/instances_train2017.json', f'{root}/train2017/*.jpg'],
              'cls': [f'{root}/train/<class>/*.JPEG']}[task]
    for line in layout:
        assert line in message


@pytest.mark.parametrize('task, remove, named, fix', [
    ('seg', 'annotations/training', 'No label maps folder {root}/annotations/training.',
     'train_dataloader.dataset.data_prefix.seg_map_path=...'),
    ('seg', 'images/validation', 'No images folder {root}/images/validation.',
     'val_dataloader.dataset.data_prefix.img_path=...'),
    ('det', 'annotations/instances_train2017.json',
     'No annotations file {root}/annotations/instances_train2017.json.',
     'train_dataloader.dataset.dataset.ann_file=...'),
    ('det', 'train2017', 'No images folder {root}/train2017.',
     'train_dataloader.dataset.dataset.data_prefix.img=...'),
    ('cls', 'val', 'No images folder {root}/val.', 'val_dataloader.dataset.data_prefix=...'),
])
def test_missing_part_of_the_layout_is_named(task, remove, named, fix, layouts, cached_deit):
    root = layouts / TASKS[task][3]
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(MissingDataError) as error:
        check_run_inputs(task_config(task, root), 'train')
    assert len(error.value.missing) == 1
    assert named.format(root=root) in messages(error)
    assert fix in messages(error)


def test_missing_evaluator_annotation_file(layouts, cached_deit):
    """mmdet's CocoMetric reads the validation json itself: a json missing
    there is named for the evaluator, with its option, next to the dataset."""
    root = layouts / 'coco'
    (root / 'annotations' / 'instances_val2017.json').unlink()
    with pytest.raises(MissingDataError) as error:
        check_run_inputs(task_config('det', root), 'train')
    assert [item.key for item in error.value.missing] == ['val_dataloader.dataset',
                                                         'val_evaluator']
    assert (f'val_evaluator (CocoMetric): no annotation file {root}/annotations/'
            'instances_val2017.json') in messages(error)
    assert '--cfg-options val_evaluator.ann_file=/path/to/instances_val2017.json' in (
        messages(error))


def test_explicit_annotation_list_is_checked(layouts, cached_deit):
    root = layouts / 'imagenet'
    cfg = task_config('cls', root, **{'train_dataloader.dataset.ann_file': 'meta/none.txt'})
    with pytest.raises(MissingDataError, match=f'No annotations file {root}/meta/none.txt'):
        check_run_inputs(cfg, 'train')
    cfg = task_config('cls', root, **{'train_dataloader.dataset.ann_file': 'meta/train.txt'})
    check_run_inputs(cfg, 'train')


# --- what is checked ------------------------------------------------------------------
def test_only_what_the_run_reads_is_checked(layouts, tmp_path, cached_deit):
    """Training reads the train and val sets and the pretrained weights (not the
    test set); testing reads the test set and the checkpoint (not the
    pretrained weights, which the checkpoint replaces)."""
    root = layouts / 'ade' / 'ADEChallengeData2016'
    elsewhere = str(tmp_path / 'nowhere')
    cfg = task_config('seg', root, **{'test_dataloader.dataset.data_root': elsewhere,
                                      'model.backbone.init_cfg.checkpoint': elsewhere})
    assert [item.key for item in find_missing_inputs(cfg, 'train')] == [
        'model.backbone.init_cfg.checkpoint']
    assert [item.key for item in find_missing_inputs(cfg, 'test')] == ['test_dataloader.dataset']
    # no validation loop, no validation data read
    cfg = task_config('seg', root, **{'val_dataloader.dataset.data_root': elsewhere})
    assert [item.key for item in find_missing_inputs(cfg, 'train')] == ['val_dataloader.dataset']
    cfg.val_cfg = None
    assert find_missing_inputs(cfg, 'train') == []
    with pytest.raises(ValueError, match="'train' or a 'test' run"):
        find_missing_inputs(cfg, 'val')


def test_wrappers_are_followed_and_unknown_or_remote_data_skipped(tmp_path, demo_root):
    coco = dict(type='CocoDataset', ann_file='annotations/instances_train2017.json',
                data_prefix=dict(img='train2017/'))
    present = dict(coco, data_root=str(demo_root / 'coco'))
    absent = dict(coco, data_root=str(tmp_path / 'coco'))
    dataset = dict(type='ConcatDataset', datasets=[
        present, dict(type='ClassBalancedDataset', oversample_thr=0.1, dataset=absent),
        dict(type='MultiImageMixDataset', dataset=absent, pipeline=[]),
        dict(absent, data_root='s3://bucket/coco/'),  # remote storage: its backend's
        dict(type='mmpretrain.CIFAR10', data_root=str(tmp_path / 'cifar')),  # downloads itself
        dict(type='NoSuchDataset', data_root=str(tmp_path / 'x')),  # not registered
    ])
    cfg = Config(dict(default_scope='mmdet', train_dataloader=dict(dataset=dataset)))
    keys = [item.key for item in find_missing_inputs(cfg, 'train')]
    assert keys == ['train_dataloader.dataset.datasets.1.dataset',
                    'train_dataloader.dataset.datasets.2.dataset']


# --- checkpoints ----------------------------------------------------------------------
@pytest.mark.parametrize('task', ['seg', 'det'])
def test_missing_pretrained_file_names_both_fixes(task, layouts, tmp_path):
    missing = tmp_path / DEIT_FILE
    cfg = task_config(task, layouts / TASKS[task][3],
                      **{'model.backbone.init_cfg.checkpoint': str(missing)})
    with pytest.raises(MissingCheckpointError) as error:
        check_run_inputs(cfg, 'train')
    assert isinstance(error.value, FileNotFoundError)
    message = messages(error)
    assert f'model.backbone.init_cfg.checkpoint: {missing} is not a file.' in message
    assert '--cfg-options model.backbone.init_cfg.checkpoint=PATH' in message
    assert 'train from scratch: --cfg-options model.backbone.init_cfg=None' in message
    assert 'README.md#pretrained-weights-url-or-local-file' in message
    cfg.model.backbone.init_cfg = None  # from scratch: nothing to check
    check_run_inputs(cfg, 'train')


def test_config_url_is_checked_in_the_cache_then_on_the_server(layouts, http_server):
    """The configs name DeiT-S by URL: a copy in the download cache needs no
    network; otherwise the server must answer; 404 and a closed port are named
    with the cache path and the fixes."""
    served, url = http_server
    root = layouts / 'ade' / 'ADEChallengeData2016'
    cfg = task_config('seg', root)
    official = cfg.model.backbone.init_cfg.checkpoint
    assert official == f'https://dl.fbaipublicfiles.com/deit/{DEIT_FILE}'
    cache = Path(torch.hub.get_dir()) / 'checkpoints' / DEIT_FILE
    with pytest.raises(MissingCheckpointError) as error:  # not cached, host unreachable
        check_run_inputs(cfg, 'train')
    assert f'{official} cannot be reached' in messages(error)
    assert f'not in the download cache ({cache})' in messages(error)
    assert f'copy it to {cache}' in messages(error)
    cache.parent.mkdir(parents=True)
    torch.save({'model': {}}, cache)
    check_run_inputs(cfg, 'train')  # the cached copy
    cache.unlink()

    torch.save({'model': {}}, served / DEIT_FILE)
    cfg.model.backbone.init_cfg.checkpoint = f'{url}/{DEIT_FILE}'
    check_run_inputs(cfg, 'train')  # the server answers
    cfg.model.backbone.init_cfg.checkpoint = f'{url}/elsewhere/{DEIT_FILE}'
    with pytest.raises(MissingCheckpointError, match='HTTP 404'):
        check_run_inputs(cfg, 'train')
    closed = closed_port_url(DEIT_FILE)
    cfg.model.backbone.init_cfg.checkpoint = closed
    with pytest.raises(MissingCheckpointError, match=f'{closed} cannot be reached .*refused'):
        check_run_inputs(cfg, 'train', timeout=5)


def closed_port_url(name: str) -> str:
    """A URL on 127.0.0.1 at a port nothing listens on."""
    server = http.server.HTTPServer(('127.0.0.1', 0), http.server.BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f'http://127.0.0.1:{port}/{name}'


class _NoHeadHandler(http.server.SimpleHTTPRequestHandler):
    """A server that refuses HEAD, as some object stores do."""

    def do_HEAD(self):
        self.send_error(405)

    def log_message(self, *args):
        pass


def test_server_refusing_head_is_asked_for_one_byte(http_server, tmp_path):
    served, _ = http_server
    torch.save({'model': {}}, served / DEIT_FILE)
    handler = functools.partial(_NoHeadHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f'http://127.0.0.1:{server.server_address[1]}'
        cfg = Config(dict(default_scope='mmseg', load_from=f'{base}/{DEIT_FILE}'))
        check_run_inputs(cfg, 'test')
        cfg.load_from = f'{base}/missing.pth'
        with pytest.raises(MissingCheckpointError, match='HTTP 404'):
            check_run_inputs(cfg, 'test')
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_data_and_checkpoints_missing_together(tmp_path):
    cfg = task_config('det', tmp_path / 'coco',
                      **{'model.backbone.init_cfg.checkpoint': str(tmp_path / 'x.pth'),
                         'load_from': str(tmp_path / 'whole.pth')})
    with pytest.raises(MissingInputError) as error:
        check_run_inputs(cfg, 'train')
    assert type(error.value) is MissingInputError
    assert [item.kind for item in error.value.missing] == ['data'] * 3 + ['checkpoint'] * 2
    assert messages(error).startswith('The run was not started: 5 of its inputs are missing')
    assert 'load_from: ' + str(tmp_path / 'whole.pth') + ' is not a file' in messages(error)


# --- through the Runner builders ------------------------------------------------------
def test_runner_builders_check_before_building_anything(tmp_path, layouts, cached_deit):
    """With check_inputs the Runner is never built: its work_dir is not created."""
    root = tmp_path / 'nowhere'
    work_dir = tmp_path / 'work_dir'
    options = {**documented_options('seg', root), 'experiment_name': 'preflight_train'}
    config = str(ROOT / TASKS['seg'][0])
    with pytest.raises(MissingDataError):
        build_train_runner(config, options, work_dir=str(work_dir), check_inputs=True)
    with pytest.raises(MissingInputError) as error:
        build_test_runner(config, str(tmp_path / 'iter_1.pth'), options,
                          work_dir=str(work_dir), check_inputs=True)
    assert [item.key for item in error.value.missing] == ['test_dataloader.dataset',
                                                         'load_from']
    with pytest.raises(MissingCheckpointError, match='load_from: .*resume.pth is not a file'):
        build_train_runner(config, documented_options('seg', layouts / 'ade' /
                                                      'ADEChallengeData2016'),
                           work_dir=str(work_dir), resume=str(tmp_path / 'resume.pth'),
                           check_inputs=True)
    assert not work_dir.exists()
