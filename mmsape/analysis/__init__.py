"""Analysis of position encodings: equivariance, resolution transfer, maps."""
from .equivariance import featmap_equivariance, logit_invariance, score_model
from .resolution import evaluate_at_sizes, override_test_resize, sweep_sizes

__all__ = [
    'featmap_equivariance', 'logit_invariance', 'score_model', 'evaluate_at_sizes',
    'override_test_resize', 'sweep_sizes'
]
