"""mmsape.apis.runner: what tools/train.py and tools/test.py build, checked on
the Runner itself (the tools' end-to-end runs are in tests/test_e2e)."""
import itertools
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.evaluator import DumpResults

from mmsape.apis import build_test_runner, build_train_runner, load_config, read_config

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
