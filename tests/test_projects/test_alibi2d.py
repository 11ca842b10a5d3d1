"""The example project's encoding plugs in from outside and computes ALiBi in 2D."""
import math

import torch

from mmsape.models.pos_encodings import TokenGrid, build_pos_encoding

from builders import tiny_vit


def test_registered_from_the_project_and_usable_by_config():
    import projects.alibi2d.alibi2d  # noqa: F401  (what custom_imports does)
    model = tiny_vit(dict(type='ALiBi2D'), train=True)
    assert model(torch.rand(2, 3, 24, 40))[0].shape == (2, 32)


def test_bias_matches_hand_computation():
    import projects.alibi2d.alibi2d  # noqa: F401
    encoding = build_pos_encoding(dict(type='ALiBi2D'), embed_dims=8, num_heads=2,
                                  num_layers=1)
    grid = TokenGrid(2, 3, num_prefix=1)  # 6 patches in 2 rows, one class token
    q = k = torch.zeros(1, 2, grid.num_tokens, 4, dtype=torch.float64)
    bias = encoding.attention_bias(0, q, k, grid)
    assert bias.dtype == torch.float64
    assert bias.shape == (2, 7, 7)
    assert bias[:, 0].abs().sum() == 0 and bias[:, :, 0].abs().sum() == 0
    # token 1 = (row 0, col 0), token 6 = (row 1, col 2): distance sqrt(5)
    assert math.isclose(bias[0, 1, 6].item(), -2 ** -4 * math.sqrt(5), rel_tol=1e-6)
    assert math.isclose(bias[1, 1, 6].item(), -2 ** -8 * math.sqrt(5), rel_tol=1e-6)
    # token 2 = (0, 1), token 5 = (1, 1): distance 1
    assert math.isclose(bias[1, 2, 5].item(), -2 ** -8, rel_tol=1e-6)
