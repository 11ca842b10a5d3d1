"""Models and inferencers from mmsape configs, through the toolboxes' own APIs.

An mmsape config is an mmdet, mmseg or mmpretrain config: its ``default_scope``
says which, and each function here hands over to that toolbox (``init_detector``
/ ``inference_detector`` / ``DetInferencer``, mmseg's ``init_model`` /
``inference_model`` / ``MMSegInferencer``, mmpretrain's ``init_model`` /
``ImageClassificationInferencer``). The toolbox's scope is the default scope
for the duration of the call only: the toolboxes build pipelines and models in
whatever scope is current, so a process that used another toolbox before (and
left its scope current) would otherwise look up, say, ``PackDetInputs`` among
mmseg's transforms.
"""
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Union

import mmcv
import numpy as np
from mmdet.apis import DetInferencer, inference_detector, init_detector
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import BaseDataElement
from mmpretrain.apis import ImageClassificationInferencer
from mmpretrain.apis import init_model as init_classifier
from mmpretrain.visualization import UniversalVisualizer
from mmseg.apis import MMSegInferencer
from mmseg.apis import inference_model as inference_segmentor
from mmseg.apis import init_model as init_segmentor
from torch import nn

from mmsape.utils import prepare_scope

from .runner import ConfigType, read_config

ImagesType = Union[str, np.ndarray, Sequence[str], Sequence[np.ndarray]]
Inferencer = Union[DetInferencer, MMSegInferencer, ImageClassificationInferencer]

#: default_scope -> the task of the toolbox's models.
TASKS = {'mmdet': 'detection', 'mmseg': 'segmentation', 'mmpretrain': 'classification'}


def config_scope(cfg: Config) -> str:
    """The toolbox a config belongs to: its ``default_scope``, which the
    toolbox's ``default_runtime`` sets."""
    scope = cfg.get('default_scope', None)
    if scope not in TASKS:
        raise ValueError(
            f'default_scope={scope!r}: mmsape runs mmdet, mmseg and mmpretrain models; '
            "inherit the toolbox's default runtime (e.g. 'mmdet::_base_/default_runtime.py') "
            f'or set default_scope to one of {sorted(TASKS)}.')
    return scope


@contextmanager
def _toolbox_scope(cfg: Config) -> Iterator[str]:
    """Register the config's toolbox and mmsape, and make the toolbox's scope
    the default one until the block ends (the previous one is restored)."""
    scope = config_scope(cfg)
    prepare_scope(cfg)
    with DefaultScope.overwrite_default_scope(scope):
        yield scope


def init_model(config: ConfigType,
               checkpoint: Optional[str] = None,
               device: str = 'cpu',
               cfg_options: Optional[dict] = None) -> nn.Module:
    """Build a detector, segmentor or classifier from a config and load a
    checkpoint, with the toolbox's own ``init_*`` function.

    Args:
        config (str | Path | Config): An mmdet, mmseg or mmpretrain config.
        checkpoint (str, optional): The weights (mmsape loads them safely, see
            ``mmsape.engine``). None leaves the model randomly initialised.
        device (str): Where the model goes. Defaults to 'cpu'.
        cfg_options (dict, optional): Entries to override in the config.

    Returns:
        nn.Module: The model in eval mode, with its config (``cfg`` for mmdet
        and mmseg models, ``_config`` for mmpretrain ones) and ``dataset_meta``
        from the checkpoint, as the toolbox's function leaves it.
    """
    cfg = read_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    with _toolbox_scope(cfg) as scope:
        if scope == 'mmdet':
            return init_detector(cfg, checkpoint, device=device)
        if scope == 'mmseg':
            return init_segmentor(cfg, checkpoint, device=device)
        return init_classifier(cfg, checkpoint, device=device)


def _model_config(model: nn.Module) -> Config:
    cfg = getattr(model, 'cfg', None) or getattr(model, '_config', None)
    if not isinstance(cfg, Config):
        raise TypeError(f'{type(model).__name__} carries no config: build the model with '
                        'mmsape.apis.init_model (or the toolbox\'s own init function).')
    return cfg


def inference_model(model: nn.Module, images: ImagesType):
    """Run a model of :func:`init_model` on images, with the toolbox's own
    inference function.

    Args:
        model (nn.Module): A model built by :func:`init_model`.
        images (str | np.ndarray | list): An image file or a BGR array (as
            ``mmcv.imread`` loads it), or a list of them. Any size: the
            config's test pipeline resizes them.

    Returns:
        A ``DetDataSample`` (``pred_instances``), ``SegDataSample``
        (``pred_sem_seg``) or mmpretrain ``DataSample`` (``pred_score``,
        ``pred_label``) per image: one for one image, a list for a list.
    """
    with _toolbox_scope(_model_config(model)) as scope:
        if scope == 'mmdet':
            return inference_detector(model, images)
        if scope == 'mmseg':
            return inference_segmentor(model, images)
        # mmpretrain's inference_model needs a model of its model zoo; its
        # inferencer takes any classifier. Its pieces are called rather than
        # the inferencer itself, whose call draws a progress bar on stdout (with
        # no line end when stdout is not a terminal): an API call, like
        # inference_detector, prints nothing.
        batch = isinstance(images, (list, tuple))
        inferencer = ImageClassificationInferencer(model)
        predictions = []
        for data in inferencer.preprocess(list(images) if batch else [images]):
            predictions.extend(inferencer.forward(data))
        return predictions if batch else predictions[0]


def build_inferencer(config: ConfigType,
                     checkpoint: Optional[str] = None,
                     device: str = 'cpu') -> Inferencer:
    """The toolbox's inferencer for a config and checkpoint: ``DetInferencer``,
    ``MMSegInferencer`` or ``ImageClassificationInferencer``.

    They build the model in their own scope; the config's ``custom_imports``
    (imported when it is read) and ``mmsape.``-prefixed types make mmsape's
    modules available there.
    """
    cfg = read_config(config)
    with _toolbox_scope(cfg) as scope:
        if scope == 'mmdet':
            return DetInferencer(cfg, checkpoint, device=device, show_progress=False)
        if scope == 'mmseg':
            return MMSegInferencer(cfg, checkpoint, device=device)
        return ImageClassificationInferencer(cfg, pretrained=checkpoint, device=device)


def _inferencer_config(inferencer: Inferencer) -> Config:
    # mmengine's inferencers keep it in ``cfg``, mmpretrain's in ``config``.
    return getattr(inferencer, 'cfg', None) or inferencer.config


def predict_and_draw(inferencer: Inferencer,
                     image: str,
                     out_file: str,
                     pred_score_thr: float = 0.3,
                     topk: int = 5,
                     seg_opacity: float = 0.5,
                     min_cls_size: int = 256) -> BaseDataElement:
    """Predict one image with an inferencer of :func:`build_inferencer` and
    draw the prediction on it with the toolbox's visualizer.

    The drawing, at the image's own size, shows the instances' masks, boxes,
    classes and scores above ``pred_score_thr`` (detection), the class
    map with class names at ``seg_opacity`` (segmentation), or the ``topk``
    classes and their scores (classification; images whose short side is
    below ``min_cls_size`` are enlarged to it so that the text fits).

    Args:
        inferencer: What :func:`build_inferencer` returned.
        image (str): An image file of any size.
        out_file (str): Where the drawing goes (PNG for lossless output).

    Returns:
        The prediction: ``DetDataSample``, ``SegDataSample`` or ``DataSample``.
    """
    with _toolbox_scope(_inferencer_config(inferencer)) as scope:
        if scope == 'mmdet':
            result = inferencer(image, return_vis=True, no_save_vis=True,
                                pred_score_thr=pred_score_thr, return_datasamples=True)
            prediction, drawing = result['predictions'][0], result['visualization'][0]
        elif scope == 'mmseg':
            # With return_datasamples, MMSegInferencer returns the sample alone.
            prediction = inferencer(image, return_datasamples=True)
            drawing = inferencer.visualize([image], [prediction], return_vis=True,
                                           opacity=seg_opacity)[0]
        else:
            prediction = inferencer(image, return_datasamples=True)[0]
            drawing = _draw_top_classes(inferencer, image, prediction, topk, min_cls_size)
    mmcv.imwrite(drawing[..., ::-1], out_file)
    return prediction


def _draw_top_classes(inferencer: ImageClassificationInferencer, image: str,
                      prediction: BaseDataElement, topk: int, min_size: int) -> np.ndarray:
    """mmpretrain's drawing of the predicted labels, given the ``topk`` best
    (its inferencer draws the best one only)."""
    shown = prediction.clone()
    scores = prediction.pred_score
    shown.set_pred_label(scores.topk(min(topk, scores.numel())).indices)
    rgb = mmcv.imread(image, channel_order='rgb')
    if inferencer.visualizer is None:
        inferencer.visualizer = UniversalVisualizer()
    short_side = min(rgb.shape[:2])
    return inferencer.visualizer.visualize_cls(
        rgb, shown, classes=inferencer.classes, draw_gt=False,
        resize=min_size if short_side < min_size else None)

