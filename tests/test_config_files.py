"""The config files: every one loads, takes mmsape's runtime choices from one
file, names its pipelines' transforms so that they build the same in every
toolbox's scope, and records the batch its learning rate is set for; the
detectors share one backbone definition, the dense tasks name DeiT-S's weights by
their public URL, and RetinaNet's pyramid levels are the strides its anchors
are laid out for."""
import copy
import importlib
import re
from pathlib import Path
from typing import Iterator, Tuple

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import TRANSFORMS, DefaultScope

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(path.relative_to(ROOT)) for path in
                 [*ROOT.glob('configs/*/*.py'), *ROOT.glob('projects/*/configs/*.py')]
                 if '_base_' not in path.parts)
DETECTORS = [path for path in CONFIGS
             if path.startswith(('configs/mask_rcnn/', 'configs/retinanet/'))]
VITDET_BACKBONE = 'configs/_base_/models/vit-s16_vitdet.py'
RUNTIME = 'configs/_base_/mmsape_runtime.py'
TOOLBOXES = ('mmdet', 'mmseg', 'mmpretrain')
#: The configs of training recipes (the study's config is a fixed measurement
#: protocol, not a recipe to train at another batch).
RECIPES = [path for path in CONFIGS if not path.startswith('projects/pe_study/')]
#: The recipes whose names give no GPUs x images: their source's batch.
RECIPE_BATCHES = {'configs/mask_rcnn/': 64, 'configs/retinanet/': 16}
DEIT_URL = 'https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth'


@pytest.mark.parametrize('path', CONFIGS)
def test_config_loads(path):
    cfg = Config.fromfile(str(ROOT / path))
    assert cfg.model.backbone.type == 'mmsape.PosEncViT'


@pytest.mark.parametrize('path', DETECTORS)
def test_detectors_take_the_shared_backbone(path):
    """Each detector's backbone is the shared windowed ViT-S/16 with only its
    training size and position encoding set."""
    shared = Config.fromfile(str(ROOT / VITDET_BACKBONE)).vitdet_backbone.to_dict()
    backbone = Config.fromfile(str(ROOT / path)).model.backbone.to_dict()
    assert backbone.pop('img_size') and 'img_size' not in shared
    backbone.pop('pos_encoding')
    shared.pop('pos_encoding')
    assert backbone == shared


@pytest.mark.parametrize('path', RECIPES)
def test_the_batch_the_lr_is_set_for_is_recorded(path):
    """auto_scale_lr, off (as in mmdet's configs) until --auto-scale-lr: the
    base batch is GPUs x images of the config's name (``8xb2``: 16), with the
    images per GPU its train dataloader loads; ViTDet's 64 and mmdet's 1x 16 for
    the detectors, whose names do not say."""
    cfg = Config.fromfile(str(ROOT / path))
    assert cfg.auto_scale_lr.enable is False
    batch = re.search(r'_(\d+)xb(\d+)[-_]', Path(path).name)
    if batch:
        gpus, per_gpu = map(int, batch.groups())
        assert cfg.train_dataloader.batch_size == per_gpu
        assert cfg.auto_scale_lr.base_batch_size == gpus * per_gpu
    else:
        expected = next(size for prefix, size in RECIPE_BATCHES.items()
                        if path.startswith(prefix))
        assert cfg.auto_scale_lr.base_batch_size == expected


@pytest.mark.parametrize('path', [path for path in RECIPES if 'vit-s16' in path and
                                  path.startswith(('configs/upernet/', 'configs/mask_rcnn/',
                                                   'configs/retinanet/', 'projects/'))])
def test_dense_tasks_start_from_deit_s_by_its_url(path):
    init_cfg = Config.fromfile(str(ROOT / path)).model.backbone.init_cfg
    assert init_cfg == dict(type='Pretrained', checkpoint=DEIT_URL)


def test_retinanet_levels_are_its_anchor_strides():
    """P3-P5 resampled from the stride-16 map, P6 and P7 by stride-2 convs (not
    max-pooling), at the strides of RetinaNet's anchor generator."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(ROOT / 'configs/retinanet/retinanet_vit-s16_simplefpn_1x_coco.py'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(model_cfg).eval()
    assert len(model.neck.extra_convs) == 2
    images = torch.rand(1, 3, 256, 384)
    with torch.no_grad():
        levels = model.neck(model.backbone(images))
    strides = [(256 // level.shape[-2], 384 // level.shape[-1]) for level in levels]
    assert strides == [tuple(stride) for stride in model.bbox_head.prior_generator.strides]
    assert strides == [(8, 8), (16, 16), (32, 32), (64, 64), (128, 128)]


@pytest.mark.parametrize('path', CONFIGS)
def test_runtime_choices_come_from_one_file(path):
    """mmsape's imports and checkpoint hook are those of the shared runtime
    file (projects add their own module to the imports)."""
    runtime = Config.fromfile(str(ROOT / RUNTIME))
    cfg = Config.fromfile(str(ROOT / path))
    assert cfg.default_hooks.checkpoint.type == runtime.atomic_checkpoint_hook.type
    imports = cfg.custom_imports.imports
    if path.startswith('projects/'):
        assert imports[0] == 'mmsape.models' and imports[1].startswith('projects.')
    else:
        assert imports == runtime.custom_imports.imports == ['mmsape.models', 'mmsape.engine']


def pipeline_transforms(cfg: Config) -> Iterator[Tuple[str, dict]]:
    """``(where, transform)`` for every transform of the config's pipelines: the
    ``*pipeline`` variables and the dataloaders' datasets (wrapped ones too),
    with the transforms nested in wrappers such as ``TestTimeAug``."""

    def transforms(where, pipeline):
        for index, transform in enumerate(pipeline):
            if isinstance(transform, (list, tuple)):
                yield from transforms(f'{where}[{index}]', transform)
                continue
            yield f'{where}[{index}]', transform
            yield from transforms(f'{where}[{index}].transforms',
                                  transform.get('transforms', []))

    for key, value in cfg.items():
        if key.endswith('pipeline'):
            yield from transforms(key, value)
        elif key.endswith('dataloader') and value:
            dataset = value.dataset
            while 'pipeline' not in dataset:  # RepeatDataset and other wrappers
                dataset = dataset.dataset
            yield from transforms(f'{key}.dataset.pipeline', dataset.pipeline)


def transform_class(transform_type: str, scope: str) -> type:
    """The class ``TRANSFORMS.build`` makes of ``transform_type`` while
    ``scope`` is the default scope (as the toolboxes' inference functions and
    mmcv's ``Compose`` build pipelines)."""
    with DefaultScope.overwrite_default_scope(scope):
        with TRANSFORMS.switch_scope_and_registry(None) as registry:
            return registry.get(transform_type)


@pytest.mark.parametrize('path', CONFIGS)
def test_pipelines_build_the_same_in_every_toolbox_scope(path):
    """A process that used another toolbox leaves its scope current, and the
    toolboxes' inference functions build a config's pipeline in it: every
    transform must name its toolbox's scope, or be mmcv's (the same class in
    every scope). mmseg's test-time LoadAnnotations keeps its bare name, by
    which mmseg's inferencers find and drop it."""
    for toolbox in TOOLBOXES:
        importlib.import_module(f'{toolbox}.utils').register_all_modules(
            init_default_scope=False)
    cfg = Config.fromfile(str(ROOT / path))
    own = cfg.default_scope
    checked = 0
    for where, transform in pipeline_transforms(cfg):
        expected = transform_class(transform.type, own)
        assert expected is not None, f'{where}: {transform.type} is not an {own} transform'
        if (own == 'mmseg' and transform.type == 'LoadAnnotations'
                and where.startswith(('test', 'val'))):
            continue
        for scope in TOOLBOXES:
            assert transform_class(transform.type, scope) is expected, (
                f"{where}: {transform.type!r} builds {expected.__module__} in {own}'s scope "
                f"but not in {scope}'s; name it '{own}.{transform.type}'")
        checked += 1
    assert checked >= 3
