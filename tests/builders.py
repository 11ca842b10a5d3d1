"""What several test files build: tiny ViTs and the command-line tools as modules.

Test files are imported with ``--import-mode=importlib`` and cannot import each
other; ``setup.cfg`` puts ``tests/`` on pytest's ``pythonpath`` so that they
import this module as ``builders``.
"""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Union

import torch

from mmsape.models import PosEncViT

ROOT = Path(__file__).resolve().parents[1]
#: The default arch of :func:`tiny_vit`.
TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)


def pos_encoding_cfg(encoding: Union[str, dict, list]) -> Union[dict, list]:
    """``'SaPE2'`` -> ``dict(type='SaPE2')``; ``'LearnedAPE+SaPE2'`` -> a stack
    (a list of configs); configs pass through."""
    if not isinstance(encoding, str):
        return encoding
    if '+' in encoding:
        return [dict(type=part) for part in encoding.split('+')]
    return dict(type=encoding)


def tiny_vit(pos_encoding: Union[str, dict, list] = 'LearnedAPE',
             *,
             embed_dims: int = 32,
             num_layers: int = 2,
             num_heads: int = 4,
             img_size=32,
             patch_size: int = 8,
             arch: Union[str, dict, None] = None,
             seed: Union[int, None] = None,
             train: bool = False,
             **kwargs) -> PosEncViT:
    """A :class:`PosEncViT` of ``embed_dims`` channels (MLP ratio 2), in eval
    mode unless ``train``.

    Args:
        pos_encoding: a config, a type name or ``'A+B'`` for a stack
            (:func:`pos_encoding_cfg`).
        arch: instead of ``embed_dims``, ``num_layers`` and ``num_heads``.
        seed: ``torch.manual_seed`` before building; None leaves the RNG alone.
        **kwargs: any other ``PosEncViT`` option.
    """
    if seed is not None:
        torch.manual_seed(seed)
    if arch is None:
        arch = dict(embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads,
                    feedforward_channels=2 * embed_dims)
    model = PosEncViT(arch=arch, img_size=img_size, patch_size=patch_size,
                      pos_encoding=pos_encoding_cfg(pos_encoding), **kwargs)
    return model.train(train)


def load_tool(name: str) -> ModuleType:
    """``tools/analysis/<name>.py`` as a module, registered in ``sys.modules``
    under ``name`` as an import would."""
    spec = importlib.util.spec_from_file_location(
        name, ROOT / 'tools' / 'analysis' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
