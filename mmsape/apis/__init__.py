"""What OpenMMLab users look for in ``<toolbox>.apis``: building a model from a
config and checkpoint, and running it on images.

This is the top layer: it may import every other mmsape package. Training and
evaluation set-up (configs, scopes, the Runner) lives in
:mod:`mmsape.utils.setup_env`, which ``tools/train.py`` and ``tools/test.py`` use.
"""
from .inference import (
    build_inferencer,
    config_scope,
    inference_model,
    init_model,
    predict_and_draw,
)

__all__ = [
    'init_model', 'inference_model', 'build_inferencer', 'predict_and_draw', 'config_scope'
]
