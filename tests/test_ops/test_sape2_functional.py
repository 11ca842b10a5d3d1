"""Tests of the SaPE² functional math (mmsape.ops.sape2.functional)."""
import torch

from mmsape.ops.sape2 import safe_sqrt


def test_safe_sqrt_is_exact_and_has_zero_gradient_at_zero():
    x = torch.tensor([0., -1e-9, 1e-30, 4.], requires_grad=True)
    y = safe_sqrt(x, floor=1e-20)
    y.sum().backward()
    assert y.tolist() == [0., 0., 0., 2.]
    assert x.grad.tolist() == [0., 0., 0., 0.25]
