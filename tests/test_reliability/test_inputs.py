"""Unusual inputs: each works correctly or fails with a ValueError naming the problem.

Complements ``tests/test_models/test_backbones/test_pos_enc_vit.py`` (which covers
3-D inputs, a 1-channel image, B=0, an all-NaN image, uint8, one image smaller
than a patch and one 1:32 image, channels-last, for SaPE² only) with: every
encoding on sub-patch, 1 x 2048 and 16 x 2048 images; single bad pixels;
non-contiguous layouts; half-precision autocast; malformed padding masks and
images with no pixels.
"""
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from mmsape.models.pos_encodings import registered_pos_encodings

from builders import tiny_vit

ENCODINGS = sorted(set(registered_pos_encodings()) - {'PositionEncodingStack'})
ALL = ENCODINGS + ['LearnedAPE+SaPE2']


vit = partial(tiny_vit, out_type='featmap', num_register_tokens=1, seed=0)


# --------------------------------------------------------------- bad values
@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_one_non_finite_pixel_is_reported(value):
    """One bad pixel in one image of the batch is enough to refuse the batch."""
    images = torch.rand(3, 3, 24, 40)
    images[2, 1, 17, 33] = value
    with pytest.raises(ValueError, match='NaN or Inf'):
        vit('SaPE2')(images)


@pytest.mark.parametrize('channels, in_channels', [(4, 3), (3, 1), (1, 4)])
def test_wrong_channel_count_names_both_counts(channels, in_channels):
    with pytest.raises(ValueError, match=f'Input has {channels} channels but the backbone '
                                         f'was built with in_channels={in_channels}'):
        vit('SaPE2', in_channels=in_channels)(torch.rand(1, channels, 16, 16))


def test_matching_channel_count_works():
    (out, ) = vit('SaPE2', in_channels=1)(torch.rand(2, 1, 16, 24))
    assert out.shape == (2, 32, 2, 3)


@pytest.mark.parametrize('shape', [(2, 0, 32), (2, 32, 0)])
def test_image_without_pixels_is_reported(shape):
    with pytest.raises(ValueError, match='have no pixels'):
        vit('SaPE2')(torch.rand(1, 3, *shape[1:]))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtype_differing_from_weights_is_reported(dtype):
    with pytest.raises(ValueError, match='dtype'):
        vit('SaPE2')(torch.rand(1, 3, 16, 16, dtype=dtype))


def test_pad_mask_of_wrong_size_is_reported():
    with pytest.raises(ValueError, match=r'pad_mask of shape \(2, 24, 41\) does not match'):
        vit('SaPE2')(torch.rand(2, 3, 24, 40), torch.zeros(2, 24, 41, dtype=torch.bool))


def test_pad_mask_with_channel_dim_is_reported():
    with pytest.raises(ValueError, match=r'pad_mask of shape \(2, 1, 24, 40\) does not match'):
        vit('SaPE2')(torch.rand(2, 3, 24, 40), torch.zeros(2, 1, 24, 40, dtype=torch.bool))


# --------------------------------------------------------------- odd sizes
@pytest.mark.parametrize('encoding', ALL)
def test_images_smaller_than_a_patch_equal_their_zero_padding(encoding):
    """Sub-patch images (1x1, 3x7, 7x1 pixels) are zero-padded to one patch:
    the result must equal that of the explicitly padded image."""
    model = vit(encoding)
    for height, width in [(1, 1), (3, 7), (7, 1)]:
        images = torch.rand(2, 3, height, width)
        (out, ) = model(images)
        assert out.shape == (2, 32, 1, 1)
        (padded, ) = model(F.pad(images, (0, 8 - width, 0, 8 - height)))
        torch.testing.assert_close(out, padded)


@pytest.mark.parametrize('encoding', ALL)
def test_extreme_aspect_ratios_train(encoding):
    """1 x 2048 and 16 x 2048 pixels (patch 16: a 1 x 128 grid) and the transpose."""
    model = vit(encoding, patch_size=16).train()
    for (height, width), grid in [((1, 2048), (1, 128)), ((16, 2048), (1, 128)),
                                  ((2048, 1), (128, 1))]:
        images = torch.rand(1, 3, height, width, requires_grad=True)
        (out, ) = model(images)
        assert out.shape == (1, 32, *grid)
        assert torch.isfinite(out).all()
        model.zero_grad()
        out.square().mean().backward()
        assert torch.isfinite(images.grad).all()
        for name, param in model.named_parameters():
            if param.grad is not None:
                assert torch.isfinite(param.grad).all(), f'{encoding} {height}x{width}: {name}'


# --------------------------------------------------------------- memory layouts
def non_contiguous_views(images: torch.Tensor) -> dict:
    """Views of ``images`` (B, 3, H, W) with unusual strides; no copies."""
    batch, channels, height, width = images.shape
    wide = torch.rand(batch, channels, height, 2 * width + 3)
    wide[..., 1:2 * width + 1:2] = images
    return {
        'transposed': images.transpose(2, 3).contiguous().transpose(2, 3),
        'strided columns': wide[..., 1:2 * width + 1:2],
        'channels last': images.contiguous(memory_format=torch.channels_last),
        'batch-major permuted': images.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
        'broadcast (stride 0)': images[:1].expand(batch, -1, -1, -1),
    }


@pytest.mark.parametrize('encoding', ALL)
def test_non_contiguous_inputs_give_the_contiguous_result(encoding):
    model = vit(encoding)
    images = torch.rand(2, 3, 20, 36)
    for name, view in non_contiguous_views(images).items():
        reference = images[:1].expand(2, -1, -1, -1) if 'broadcast' in name else images
        assert torch.equal(view, reference)
        assert not view.is_contiguous() or name == 'channels last'
        torch.testing.assert_close(model(view)[0], model(reference.contiguous())[0],
                                   msg=f'{encoding}: {name}')


def test_non_contiguous_input_gradients_match():
    model = vit('SaPE2').train()
    base = torch.rand(2, 3, 36, 20)
    grads = []
    for images in (base.transpose(2, 3), base.transpose(2, 3).contiguous()):
        images = images.detach().requires_grad_(True)
        model(images)[0].square().mean().backward()
        grads.append(images.grad)
    torch.testing.assert_close(*grads)


# --------------------------------------------------------------- autocast
@pytest.mark.parametrize('encoding', ALL)
@pytest.mark.parametrize('dtype, atol', [(torch.bfloat16, 6e-2), (torch.float16, 1e-2)])
def test_cpu_autocast_is_close_to_float32(encoding, dtype, atol):
    """Measured max errors: ~0.013 (bf16) and ~0.0015 (fp16) on outputs of
    magnitude ~3; the tolerances are about five times that."""
    model = vit(encoding)
    images = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        (reference, ) = model(images)
        with torch.autocast('cpu', dtype=dtype):
            (out, ) = model(images)
    assert out.shape == reference.shape and torch.isfinite(out).all()
    assert not torch.equal(out.float(), reference), 'autocast changed nothing'
    torch.testing.assert_close(out.float(), reference, rtol=0, atol=atol)


@pytest.mark.parametrize('encoding', ['SaPE2', 'RoPE2D', 'CoPE1D', 'PEG'])
def test_bf16_autocast_backward_is_finite(encoding):
    model = vit(encoding, out_type='avg_featmap').train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        (out, ) = model(torch.rand(2, 3, 24, 40))
    out.float().square().mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_bf16_weights_with_bf16_input_are_close_to_float32():
    """A model converted with ``.bfloat16()`` (no autocast) runs on bf16 input."""
    model = vit('SaPE2')
    images = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        (reference, ) = model(images)
        (out, ) = model.bfloat16()(images.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0, atol=1e-1)
