"""mmsape's registries: children of MMEngine's roots, in the ``mmsape`` scope.

Because they are children of the roots, mmdet / mmseg / mmpretrain configs can
name ``type='mmsape.PosEncViT'`` (MMEngine imports ``mmsape.registry`` on the
first ``mmsape.`` lookup and ``locations`` imports the modules that register
into it), while mmsape's own configs use plain names under
``default_scope='mmsape'``. :func:`mmsape.utils.register_all_modules` imports
every location at once.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

#: Backbones, necks, detectors and other ``nn.Module`` s.
MODELS = Registry('model', parent=MMENGINE_MODELS, locations=['mmsape.models'])
#: Position encodings, built by the backbone from its ``pos_encoding`` config.
#: A root of its own: third parties register new encodings here (see projects/).
POS_ENCODINGS = Registry(
    'position encoding', scope='mmsape', locations=['mmsape.models.pos_encodings'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, locations=['mmsape.datasets'])
#: Data transforms that check what they load (``mmsape.datasets.transforms``).
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS,
                      locations=['mmsape.datasets.transforms'])
#: Hooks, among them the atomic checkpoint hook. Importing ``mmsape.engine`` also
#: registers its safe checkpoint loaders and atomic file backend with MMEngine.
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, locations=['mmsape.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    locations=['mmsape.engine'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=MMENGINE_MODEL_WRAPPERS,
                          locations=['mmsape.engine'])
