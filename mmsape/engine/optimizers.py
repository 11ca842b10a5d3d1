"""Layer-wise learning-rate decay for any model whose backbone is a PosEncViT."""
from functools import partial
from typing import List

from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from torch import nn

from mmsape.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-decay constructor, for detectors and segmentors too.

    mmpretrain's version needs ``get_layer_depth`` on the whole model, which only
    its classifiers have; here the backbone's ``get_layer_depth`` (see
    :meth:`mmsape.models.PosEncViT.get_layer_depth`) is used whenever the model
    itself has none, so mmdet / mmseg models get ViTDet / BEiT-style decay:
    ``lr * layer_decay_rate ** (max_depth - depth - 1)``.

    Examples:
        >>> optim_wrapper = dict(
        ...     type='OptimWrapper',
        ...     constructor='mmsape.LayerDecayOptimWrapperConstructor',
        ...     optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.1),
        ...     paramwise_cfg=dict(layer_decay_rate=0.7))
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   get_layer_depth=None, **kwargs) -> None:
        if get_layer_depth is None and not hasattr(module, 'get_layer_depth'):
            backbone = getattr(module, 'backbone', None)
            if backbone is None or not hasattr(backbone, 'get_layer_depth'):
                raise TypeError(
                    f'Layer-wise lr decay needs a get_layer_depth method on the model '
                    f'({type(module).__name__}) or its backbone; use mmsape.PosEncViT '
                    f'or remove layer_decay_rate / the constructor from optim_wrapper.')
            get_layer_depth = partial(backbone.get_layer_depth, prefix='backbone.')
        super().add_params(params, module, prefix=prefix,
                           get_layer_depth=get_layer_depth, **kwargs)
