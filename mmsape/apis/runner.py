"""Configs and MMEngine Runners for training and testing.

``tools/train.py`` and ``tools/test.py`` are thin command lines over
:func:`build_train_runner` and :func:`build_test_runner`; the analysis tools
build their Runners with the same functions, so every entry point reads a config,
registers its toolbox and starts distributed runs the same way.

An mmsape config is an mmdet, mmseg or mmpretrain config: its ``default_scope``
says which toolbox's modules :func:`load_config` registers (mmsape's are
registered for all of them).
"""
import copy
import os.path as osp
from pathlib import Path
from typing import Optional, Union

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmsape.engine import init_cpu_process_group
from mmsape.utils import prepare_scope

from .preflight import check_run_inputs

__all__ = [
    'read_config', 'load_config', 'build_runner', 'build_train_runner', 'build_test_runner'
]

ConfigType = Union[str, Path, Config]


def read_config(config: ConfigType) -> Config:
    """A config file read, or a Config copied (so the caller's stays as it is);
    nothing is registered."""
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if isinstance(config, (str, Path)):
        return Config.fromfile(str(config))
    raise TypeError(f'config must be a file path or an mmengine Config, not '
                    f'{type(config).__name__}')


def load_config(config: ConfigType,
                cfg_options: Optional[dict] = None,
                launcher: str = 'none',
                work_dir: Optional[str] = None) -> Config:
    """Read a config, apply ``--cfg-options``, and register its toolbox's modules.

    Args:
        config (str | Path | Config): A config file, or a Config (copied, so the
            caller's is left as it is).
        cfg_options (dict, optional): Entries to override, as ``--cfg-options``
            gives them (``{'model.backbone.pos_encoding.type': 'PEG'}``).
        launcher (str): MMEngine's job launcher: 'none', 'pytorch' (torchrun),
            'slurm' or 'mpi'. On a machine without GPUs, 'pytorch' and 'slurm'
            start the process group with gloo
            (:func:`mmsape.engine.init_cpu_process_group`). Defaults to 'none'.
        work_dir (str, optional): Where logs and checkpoints go. Defaults to the
            config's ``work_dir``, else ``./work_dirs/<config name>`` as in mmdet
            and mmseg.

    Returns:
        Config: The config, ready for :func:`build_runner`.
    """
    cfg = read_config(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        name = config if isinstance(config, (str, Path)) else (cfg.filename or 'config')
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(str(name)))[0])
    prepare_scope(cfg)
    if cfg.launcher != 'none' and not torch.cuda.is_available():
        init_cpu_process_group(cfg)
    return cfg


def build_runner(cfg: Config) -> Runner:
    """MMEngine's Runner for a config of :func:`load_config`, or the config's
    ``runner_type``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def build_train_runner(config: ConfigType,
                       cfg_options: Optional[dict] = None,
                       work_dir: Optional[str] = None,
                       launcher: str = 'none',
                       resume: Union[bool, str] = False,
                       amp: bool = False,
                       auto_scale_lr: bool = False,
                       check_inputs: bool = False) -> Runner:
    """The Runner that trains a config (``runner.train()``), as ``tools/train.py``.

    Args:
        config, cfg_options, work_dir, launcher: See :func:`load_config`.
        resume (bool | str): True resumes from the latest checkpoint in
            ``work_dir`` (a fresh start when there is none); a path resumes
            from that checkpoint. Defaults to False.
        amp (bool): Automatic mixed precision (MMEngine's ``AmpOptimWrapper``,
            dynamic loss scale); needs a CUDA GPU. Defaults to False.
        auto_scale_lr (bool): Scale the learning rate by the batch the run
            trains with, as mmdet's ``--auto-scale-lr``: the Runner multiplies
            it by (processes x samples per process) / the config's
            ``auto_scale_lr.base_batch_size``, the batch it was set for.
            Defaults to False.
        check_inputs (bool): Check, before anything is built, that the data
            and the checkpoints the run reads are there
            (:func:`mmsape.apis.check_run_inputs`; ``tools/train.py`` does).
            Defaults to False.

    Returns:
        Runner: Built, not yet trained.

    Raises:
        MissingInputError: With ``check_inputs``, for missing data or checkpoints.
    """
    cfg = load_config(config, cfg_options, launcher, work_dir)
    if amp:
        _enable_amp(cfg)
    if auto_scale_lr:
        _enable_auto_scale_lr(cfg)
    if resume is True:
        cfg.resume = True
        cfg.load_from = None
    elif resume:
        cfg.resume = True
        cfg.load_from = resume
    if check_inputs:
        check_run_inputs(cfg, 'train')
    return build_runner(cfg)


def build_test_runner(config: ConfigType,
                      checkpoint: Optional[str],
                      cfg_options: Optional[dict] = None,
                      work_dir: Optional[str] = None,
                      launcher: str = 'none',
                      show: bool = False,
                      show_dir: Optional[str] = None,
                      wait_time: float = 2.,
                      tta: bool = False,
                      out: Optional[str] = None,
                      check_inputs: bool = False) -> Runner:
    """The Runner that evaluates a checkpoint (``runner.test()``), as
    ``tools/test.py`` (with mmdet's and mmseg's options).

    The checkpoint is loaded by ``runner.test()``, after the hooks' ``before_run``
    as MMEngine orders it; ``runner.load_or_resume()`` loads it earlier for a
    Runner used only for its model.

    Args:
        config, cfg_options, work_dir, launcher: See :func:`load_config`.
        checkpoint (str, optional): The weights; None tests the model as
            initialised.
        show (bool): Show each test image's drawing (prediction next to ground
            truth) in a window. Defaults to False.
        show_dir (str, optional): Save those drawings in this folder.
        wait_time (float): Seconds each drawing stays shown. Defaults to 2.
        tta (bool): Test the config's ``tta_model`` around its model on its
            ``tta_pipeline``. Defaults to False.
        out (str, optional): Dump the predictions to this pickle file (mmdet's
            ``DumpDetResults`` for detectors, MMEngine's ``DumpResults``
            otherwise).
        check_inputs (bool): Check, before anything is built, that the test
            data and the checkpoint are there
            (:func:`mmsape.apis.check_run_inputs`; ``tools/test.py`` does).
            Defaults to False.

    Returns:
        Runner: Built, not yet run.

    Raises:
        MissingInputError: With ``check_inputs``, for missing data or checkpoints.
    """
    if out is not None and not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'out={out!r}: the predictions are dumped to a pickle; name a '
                         '.pkl file.')
    cfg = load_config(config, cfg_options, launcher, work_dir)
    cfg.load_from = checkpoint
    cfg.resume = False
    if show or show_dir:
        _enable_visualization(cfg, show, show_dir, wait_time)
    if tta:
        _use_tta(cfg)
    if check_inputs:
        check_run_inputs(cfg, 'test')
    runner = build_runner(cfg)
    if out:
        _add_dump_metric(runner, cfg.get('default_scope'), out)
    return runner


def _enable_amp(cfg: Config) -> None:
    if not torch.cuda.is_available():
        raise ValueError("amp needs a CUDA GPU (MMEngine's AmpOptimWrapper does not run on "
                         'the CPU); train without it (no --amp).')
    if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        print_log('AMP is already enabled in the config.', logger='current')
        return
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def _enable_auto_scale_lr(cfg: Config) -> None:
    """Switch on MMEngine's lr scaling, as mmdet's ``tools/train.py --auto-scale-lr``."""
    settings = cfg.get('auto_scale_lr')
    if not settings or not settings.get('base_batch_size'):
        raise ValueError(
            f'auto_scale_lr: {cfg.filename or "the config"} does not say which batch its '
            'learning rate was set for. Add auto_scale_lr = dict(enable=False, '
            'base_batch_size=N) to it (N = GPUs x samples per GPU of the recipe, e.g. 16 '
            'for 8xb2), or pass --cfg-options auto_scale_lr.base_batch_size=N.')
    settings.enable = True


def _enable_visualization(cfg: Config, show: bool, show_dir: Optional[str],
                          wait_time: float) -> None:
    """Switch on the config's visualization hook for testing, as each toolbox's
    own ``tools/test.py`` does for its hook, drawing every test image."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ValueError(
            'show / show_dir draw through the visualization hook, and the config has '
            'none: add default_hooks.visualization, e.g. dict(type=\'DetVisualizationHook\') '
            "(mmdet), dict(type='SegVisualizationHook') (mmseg) or "
            "dict(type='VisualizationHook') (mmpretrain).")
    # Absolute: mmdet's and mmpretrain's hooks put relative folders under the
    # run's log folder.
    show_dir = osp.abspath(show_dir) if show_dir else None
    kind = hook['type'].split('.')[-1]
    if kind == 'DetVisualizationHook':
        hook.update(draw=True, test_out_dir=show_dir)
    elif kind == 'SegVisualizationHook':
        # It draws every `interval`-th batch and saves through the visualizer.
        hook.update(draw=True, interval=1)
        if show_dir:
            cfg.visualizer.save_dir = show_dir
    elif kind == 'VisualizationHook':
        hook.update(enable=True, interval=1, out_dir=show_dir)
    else:
        raise ValueError(f'show / show_dir: unknown visualization hook {hook["type"]!r}; '
                         'mmsape drives those of mmdet, mmseg and mmpretrain.')
    hook.update(show=show, wait_time=wait_time)


def _use_tta(cfg: Config) -> None:
    """Test the config's ``tta_model`` around its model on its ``tta_pipeline``."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise ValueError(
            f'tta: {cfg.filename or "the config"} defines no {" or ".join(missing)}. Add '
            "them as mmdet / mmseg configs do, e.g. tta_model = dict(type='SegTTAModel') "
            "and a tta_pipeline whose TestTimeAug lists the flips / scales to merge.")
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)


def _add_dump_metric(runner: Runner, scope: str, out_file: str) -> None:
    """Dump the predictions with the toolbox's metric for it (mmdet's encodes
    masks and drops the ground truth)."""
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults as DumpResults
    else:
        from mmengine.evaluator import DumpResults
    runner.test_loop.evaluator.metrics.append(DumpResults(out_file_path=out_file))
