"""Analysis of position encodings (equivariance, resolution transfer, maps) and
of what a model is trained on (:func:`browse_dataset`)."""
from .browse_dataset import browse_dataset
from .equivariance import featmap_equivariance, logit_invariance, score_model
from .resolution import evaluate_at_sizes, override_test_resize, sweep_sizes

__all__ = [
    'browse_dataset', 'featmap_equivariance', 'logit_invariance', 'score_model',
    'evaluate_at_sizes', 'override_test_resize', 'sweep_sizes'
]
