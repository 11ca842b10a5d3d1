"""What a model is trained on: each sample of a config's training set after the
training pipeline (augmentation included), drawn with its labels by the
toolbox's own visualizer, as mmdet's, mmseg's and mmpretrain's
``browse_dataset.py`` draw them: boxes and masks (``DetLocalVisualizer``), label
maps (``SegLocalVisualizer``), the class (mmpretrain's ``UniversalVisualizer``).
``tools/misc/browse_dataset.py`` is its command line.

Only the training set: the toolboxes' test pipelines load the annotations after
resizing the image, at the original size, for evaluation, so they would be
drawn off the image.
"""
import datetime
import os
import os.path as osp
from typing import List, Optional, Union

import numpy as np
from mmengine.config import Config
from mmengine.registry import DATASETS, VISUALIZERS, DefaultScope

from mmsape.utils import prepare_scope

__all__ = ['browse_dataset']

#: The short side small classification images are drawn at, so that the
#: label text fits.
CLS_DRAWING_SIZE = 224


def browse_dataset(config: Union[str, Config],
                   output_dir: Optional[str] = None,
                   max_samples: Optional[int] = None,
                   show: bool = False,
                   wait_time: float = 2.,
                   cfg_options: Optional[dict] = None) -> List[str]:
    """Draw the samples of the training set as the training pipeline gives them.

    Args:
        config (str | Config): An mmdet, mmseg or mmpretrain config.
        output_dir (str, optional): Where the drawings are written, one PNG
            per sample (``<index>_<image name>.png``). None writes nothing.
        max_samples (int, optional): Draw at most this many samples (the
            first ones). Defaults to all.
        show (bool): Show each drawing in a window. Defaults to False.
        wait_time (float): Seconds each drawing stays shown. Defaults to 2.
        cfg_options (dict, optional): Config entries to override, as
            ``--cfg-options`` gives them.

    Returns:
        list[str]: The files written.

    Raises:
        MissingDataError: The dataset's folders or annotation files are missing.
    """
    # mmsape.apis builds on the toolboxes' APIs: imported when used, as the
    # other analyses do.
    from mmsape.apis import MissingDataError, config_scope, find_missing_data, read_config
    if output_dir is None and not show:
        raise ValueError('browse_dataset: nothing to do; give an output_dir to write the '
                         'drawings to, or show=True to show them.')
    cfg = read_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    loader = 'train_dataloader'
    if not cfg.get(loader):
        raise ValueError(f'{cfg.filename or "The config"} has no train_dataloader to draw.')
    missing = find_missing_data(cfg, [loader])
    if missing:
        raise MissingDataError(missing)
    scope = config_scope(cfg)
    prepare_scope(cfg)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
    written = []
    with DefaultScope.overwrite_default_scope(scope):
        dataset = DATASETS.build(cfg[loader].dataset)
        visualizer = _build_visualizer(cfg)
        visualizer.dataset_meta = dataset.metainfo
        count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
        for index in range(count):
            sample = dataset[index]
            image = sample['inputs'].permute(1, 2, 0).numpy()[..., ::-1]  # BGR -> RGB
            data_sample = sample['data_samples']
            stem = osp.splitext(osp.basename(data_sample.get('img_path', str(index))))[0]
            name = f'{index:05d}_{stem}.png'  # lossless: thin lines and text stay sharp
            out_file = osp.join(output_dir, name) if output_dir is not None else None
            _draw(scope, visualizer, np.ascontiguousarray(image), data_sample, name, show,
                  wait_time, out_file)
            if out_file is not None:
                written.append(out_file)
    return written


def _build_visualizer(cfg: Config):
    """The config's visualizer, under a name of its own (MMEngine keeps one
    instance per name) and without backends: the drawings are written here."""
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S.%f')
    settings = dict(cfg.visualizer, name=f'browse_dataset_{stamp}', vis_backends=None,
                    save_dir=None)
    return VISUALIZERS.build(settings)


def _draw(scope: str, visualizer, image: np.ndarray, data_sample, name: str, show: bool,
          wait_time: float, out_file: Optional[str]) -> None:
    if scope == 'mmdet':
        _draw_detection(visualizer, image, data_sample, name, show, wait_time, out_file)
    elif scope == 'mmseg':
        visualizer.add_datasample(name, image, data_sample, draw_pred=False, show=show,
                                  wait_time=wait_time, out_file=out_file)
    else:
        short_side = min(image.shape[:2])
        visualizer.visualize_cls(
            image, data_sample, draw_pred=False, show=show, wait_time=wait_time,
            out_file=out_file, name=name,
            resize=CLS_DRAWING_SIZE if short_side < CLS_DRAWING_SIZE else None)


def _draw_detection(visualizer, image: np.ndarray, data_sample, name: str, show: bool,
                    wait_time: float, out_file: Optional[str]) -> None:
    """Boxes and masks as mmdet's ``browse_dataset.py`` hands them to the
    visualizer: box tensors and boolean mask arrays."""
    from mmdet.models.utils import mask2ndarray
    from mmdet.structures.bbox import BaseBoxes
    data_sample = data_sample.numpy()
    instances = data_sample.gt_instances
    boxes: Union[BaseBoxes, np.ndarray, None] = instances.get('bboxes', None)
    if isinstance(boxes, BaseBoxes):
        instances.bboxes = boxes.tensor
    masks = instances.get('masks', None)
    if masks is not None:
        instances.masks = mask2ndarray(masks).astype(bool)
    data_sample.gt_instances = instances
    visualizer.add_datasample(name, image, data_sample, draw_pred=False, show=show,
                              wait_time=wait_time, out_file=out_file)
