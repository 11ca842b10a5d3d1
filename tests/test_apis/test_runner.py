"""mmsape.apis.runner: what tools/train.py and tools/test.py build, checked on
the Runner itself (the tools' end-to-end runs are in tests/test_e2e)."""
import itertools
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.evaluator import DumpResults

from mmsape.apis import build_test_runner, build_train_runner, load_config, read_config
from mmsape.testing.demo_data import ensure_demo_data

ROOT = Path(__file__).resolve().parents[2]
CLS = 'configs/demo/vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet.py'
SEG = 'configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py'
#: The Runner's logger and visualizer are per-name singletons: one name per Runner.
NAMES = (f'test_runner_{index}' for index in itertools.count())


def options(**extra) -> dict:
    return {'experiment_name': next(NAMES), **extra}


def test_load_config_reads_overrides_and_registers():
    cfg = load_config(str(ROOT / CLS), {'model.backbone.pos_encoding.type': 'PEG'})
    assert cfg.model.backbone.pos_encoding.type == 'PEG'
    assert cfg.launcher == 'none'
    assert cfg.work_dir == './work_dirs/vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet'
    from mmpretrain.registry import TRANSFORMS
    assert TRANSFORMS.get('mmpretrain.ResizeEdge') is not None

    given = Config.fromfile(str(ROOT / CLS))
    cfg = load_config(given, {'train_cfg.max_iters': 7}, work_dir='elsewhere')
    assert (cfg.train_cfg.max_iters, cfg.work_dir) == (7, 'elsewhere')
    assert given.train_cfg.max_iters == 300 and 'work_dir' not in given  # a copy was changed
    with pytest.raises(TypeError, match='file path or an mmengine Config'):
        read_config(dict(model=None))


@pytest.mark.parametrize('resume, expected', [
    (False, (False, None)), (True, (True, None)), ('some/iter_4.pth', (True, 'some/iter_4.pth'))])
def test_train_runner_resumes_as_asked(tmp_path, resume, expected):
    runner = build_train_runner(str(ROOT / CLS), options(), work_dir=str(tmp_path),
                                resume=resume)
    assert (runner._resume, runner._load_from) == expected
    assert runner.work_dir == str(tmp_path.resolve())


@pytest.mark.skipif(torch.cuda.is_available(), reason='the refusal is for CPU-only machines')
def test_amp_without_a_gpu_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match='amp needs a CUDA GPU.*without it'):
        build_train_runner(str(ROOT / CLS), options(), work_dir=str(tmp_path), amp=True)


def test_test_runner_with_tools_test_options(tmp_path):
    """--show-dir, --tta and --out: the hook draws every image into the folder,
    the config's TTA model wraps the model on its TTA pipeline, and the
    predictions are dumped."""
    seg = Config.fromfile(str(ROOT / SEG))
    runner = build_test_runner(str(ROOT / SEG), 'some/iter_4.pth', options(),
                               work_dir=str(tmp_path), show_dir=str(tmp_path / 'drawings'),
                               tta=True, out=str(tmp_path / 'predictions.pkl'))
    assert (runner._load_from, runner._resume) == ('some/iter_4.pth', False)
    assert type(runner.model).__name__ == 'SegTTAModel'
    assert runner.cfg.test_dataloader.dataset.pipeline == seg.tta_pipeline
    hook = next(h for h in runner.hooks if type(h).__name__ == 'SegVisualizationHook')
    assert hook.draw and hook.interval == 1
    assert runner.cfg.visualizer.save_dir == str(tmp_path / 'drawings')
    dump = runner.test_loop.evaluator.metrics[-1]
    assert isinstance(dump, DumpResults) and dump.out_file_path == str(tmp_path / 'predictions.pkl')


@pytest.mark.parametrize('config, test_options, message', [
    (CLS, dict(tta=True), 'defines no tta_model or tta_pipeline'),
    (SEG, dict(out='metrics.json'), r'name a \.pkl file'),
])
def test_test_runner_options_the_config_cannot_serve_name_the_fix(tmp_path, config,
                                                                  test_options, message):
    with pytest.raises(ValueError, match=message):
        build_test_runner(str(ROOT / config), None, options(), work_dir=str(tmp_path),
                          **test_options)


def trained_lrs(work_dir, **train_options) -> list:
    """The learning rate of each parameter group after one iteration of the
    classification demo with no lr schedule, its batch (8) against a base batch
    of 32."""
    ensure_demo_data(ROOT / 'data' / 'demo')
    runner = build_train_runner(str(ROOT / CLS), options(**{
        'train_cfg.max_iters': 1, 'train_cfg.val_begin': 100, 'param_scheduler': [],
        'auto_scale_lr.base_batch_size': 32, 'custom_hooks': [],
        'default_hooks.checkpoint.interval': 100}), work_dir=str(work_dir), **train_options)
    runner.train()
    return [group['lr'] for group in runner.optim_wrapper.optimizer.param_groups]


@pytest.mark.usefixtures('single_thread')  # two trainings; threads only contend on 2 cores
def test_auto_scale_lr_scales_by_the_batch_against_the_base(tmp_path):
    """As mmdet's --auto-scale-lr: lr x (processes x samples per process) /
    auto_scale_lr.base_batch_size, here 1 x 8 / 32, in every parameter group;
    without it the config's lr whatever the batch."""
    configured = Config.fromfile(str(ROOT / CLS)).optim_wrapper.optimizer.lr
    assert Config.fromfile(str(ROOT / CLS)).train_dataloader.batch_size == 8
    unscaled = trained_lrs(tmp_path / 'unscaled')
    scaled = trained_lrs(tmp_path / 'scaled', auto_scale_lr=True)
    assert len(unscaled) > 1 and set(unscaled) == {configured}
    assert scaled == pytest.approx([lr * 8 / 32 for lr in unscaled], rel=1e-12)


def test_auto_scale_lr_without_a_base_batch_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r'does not say which batch its learning rate was set '
                       r'for.*auto_scale_lr = dict\(enable=False, base_batch_size=N\).*'
                       r'--cfg-options auto_scale_lr.base_batch_size=N'):
        build_train_runner(str(ROOT / CLS), options(auto_scale_lr=None),
                           work_dir=str(tmp_path), auto_scale_lr=True)
