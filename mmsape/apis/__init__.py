"""What OpenMMLab users look for in ``<toolbox>.apis``: building a model from a
config and checkpoint and running it on images (:mod:`.inference`), and reading
a config and building the MMEngine Runner that trains or tests it
(:mod:`.runner`, behind ``tools/train.py`` and ``tools/test.py``).

It may import every package of mmsape below :mod:`mmsape.analysis`.
"""
from .inference import (
    build_inferencer,
    config_scope,
    inference_model,
    init_model,
    predict_and_draw,
)
from .runner import (
    build_runner,
    build_test_runner,
    build_train_runner,
    load_config,
    read_config,
)

__all__ = [
    'init_model', 'inference_model', 'build_inferencer', 'predict_and_draw', 'config_scope',
    'read_config', 'load_config', 'build_runner', 'build_train_runner', 'build_test_runner'
]
