"""Optimizer wrapper constructors that honour the model's ``no_weight_decay()``.

Weight decay has one source of truth: the model declares the parameters that
get none (``no_weight_decay()`` on the model, or on its ``backbone`` as
mmsape's :class:`~mmsape.models.PosEncViT` and timm's ViTs have it), and the
constructors here give exactly those parameters ``weight_decay=0``, whatever
else ``paramwise_cfg`` says. Configs need no ``custom_keys`` for position
tables or prefix tokens.
"""
from functools import partial
from typing import List, Set

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from torch import nn
from torch.optim import Optimizer

from mmsape.registry import OPTIM_WRAPPER_CONSTRUCTORS


def declared_no_weight_decay(model: nn.Module) -> Set[str]:
    """Names, relative to ``model``, of the parameters it declares free of decay.

    Read from ``model.no_weight_decay()`` or, for models that have none
    (mmdet's detectors, mmseg's segmentors, mmpretrain's classifiers), from
    ``model.backbone.no_weight_decay()``. Every name must be a parameter.

    Raises:
        ValueError: A declared name is not a parameter of the model.
    """
    model = getattr(model, 'module', model)  # (distributed) model wrappers
    if hasattr(model, 'no_weight_decay'):
        names = set(model.no_weight_decay())
    elif hasattr(getattr(model, 'backbone', None), 'no_weight_decay'):
        names = {f'backbone.{name}' for name in model.backbone.no_weight_decay()}
    else:
        return set()
    unknown = sorted(names - {name for name, _ in model.named_parameters()})
    if unknown:
        raise ValueError(f'no_weight_decay() of {type(model).__name__} names '
                         f'{", ".join(unknown)}, which are not parameters of the model; '
                         f'it must return full parameter names.')
    return names


def exclude_from_weight_decay(optimizer: Optimizer, model: nn.Module) -> None:
    """Set ``weight_decay=0`` for the parameters :func:`declared_no_weight_decay`
    names, in place; a param group that mixes them with others is split in two.

    Matching is by parameter identity, so a declared ``position_tables.1`` does
    not also catch ``position_tables.10`` (as a ``custom_keys`` substring would).
    """
    model = getattr(model, 'module', model)
    parameters = dict(model.named_parameters())
    declared = {id(parameters[name]): name for name in declared_no_weight_decay(model)}
    excluded = []
    for group in list(optimizer.param_groups):
        if not group.get('weight_decay'):
            continue
        params = group['params']
        no_decay = [p for p in params if id(p) in declared]
        if len(no_decay) == len(params):
            group['weight_decay'] = 0.
        elif no_decay:
            group['params'] = [p for p in params if id(p) not in declared]
            optimizer.add_param_group({**group, 'params': no_decay, 'weight_decay': 0.})
        excluded += [declared[id(p)] for p in no_decay]
    if excluded:
        print_log(f'weight_decay=0 for the parameters the model declares in '
                  f'no_weight_decay(): {", ".join(sorted(excluded))}', logger='current')


class _DeclaredNoWeightDecay:
    """Constructor mixin: the built optimizer honours the model's declaration."""

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        exclude_from_weight_decay(optim_wrapper.optimizer, model)
        return optim_wrapper


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DeclaredDecayOptimWrapperConstructor(_DeclaredNoWeightDecay,
                                           DefaultOptimWrapperConstructor):
    """MMEngine's default constructor, plus the model's ``no_weight_decay()``.

    Everything of :class:`mmengine.optim.DefaultOptimWrapperConstructor`
    (``paramwise_cfg`` with ``norm_decay_mult``, ``custom_keys``, ...) applies;
    then the parameters the model declares (see :func:`declared_no_weight_decay`)
    get ``weight_decay=0``.

    Examples:
        >>> optim_wrapper = dict(
        ...     type='OptimWrapper',
        ...     constructor='mmsape.DeclaredDecayOptimWrapperConstructor',
        ...     optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        ...     paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
    """


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(_DeclaredNoWeightDecay,
                                        LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-decay constructor, for detectors and segmentors too,
    plus the model's ``no_weight_decay()``.

    mmpretrain's version needs ``get_layer_depth`` on the whole model, which only
    its classifiers have; here the backbone's ``get_layer_depth`` (see
    :meth:`mmsape.models.PosEncViT.get_layer_depth`) is used whenever the model
    itself has none, so mmdet / mmseg models get ViTDet / BEiT-style decay:
    ``lr * layer_decay_rate ** (max_depth - depth - 1)``. The parameters the
    model declares (see :func:`declared_no_weight_decay`) get
    ``weight_decay=0``.

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
