"""What OpenMMLab users look for in ``<toolbox>.apis``: building a model from a
config and checkpoint and running it on images (:mod:`.inference`), and reading
a config and building the MMEngine Runner that trains or tests it
(:mod:`.runner`, behind ``tools/train.py`` and ``tools/test.py``), and checking
that the data and checkpoints a run reads are there before it starts
(:mod:`.preflight`).

It may import every package of mmsape below :mod:`mmsape.analysis`.
"""
from .inference import (
    build_inferencer,
    config_scope,
    inference_model,
    init_model,
    predict_and_draw,
)
from .preflight import (
    MissingCheckpointError,
    MissingDataError,
    MissingInputError,
    check_run_inputs,
    find_missing_data,
    find_missing_inputs,
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
    'read_config', 'load_config', 'build_runner', 'build_train_runner', 'build_test_runner',
    'check_run_inputs', 'find_missing_inputs', 'find_missing_data', 'MissingInputError',
    'MissingDataError', 'MissingCheckpointError'
]
