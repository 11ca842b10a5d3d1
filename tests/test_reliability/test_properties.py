"""Property-based tests: every position encoding on any small grid, any prefix.

Hypothesis draws the grid (1..9 x 1..9 patches, including 1 x W and H x 1),
the batch size, the prefix tokens (class token and 0..2 register tokens), the
width and depth of a tiny :class:`PosEncViT`, and checks forward + backward:
finite outputs of the expected shape, finite gradients for the input and
every trainable parameter. SaPE² also gets the degenerate case where every
SaPE vector coincides (constant images): all its distances are 0, where
``d ||s_i - s_n|| / ds`` is undefined, and the gradient must stay finite.
"""
import math
from functools import partial

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmsape.models import PosEncViT
from mmsape.models.pos_encodings import registered_pos_encodings
from mmsape.ops.sape2 import pairwise_l2, squared_distance_factors

import builders

PATCH = 4
# Every registered encoding on its own, plus stacks (token-additive + in-attention).
ENCODINGS = sorted(set(registered_pos_encodings()) - {'PositionEncodingStack'})
STACKS = ['LearnedAPE+SaPE2', 'SinCos2DPositionEncoding+PEG+RoPE2D']
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


tiny_vit = partial(builders.tiny_vit, embed_dims=16, num_layers=1, num_heads=2,
                   img_size=4 * PATCH, patch_size=PATCH, out_type='raw', train=True)


@st.composite
def model_and_input(draw):
    """Backbone options and an input whose patch grid is ``grid_hw``."""
    grid_h = draw(st.integers(1, 9))
    grid_w = draw(st.integers(1, 9))
    # Any pixel size whose ceil(size / PATCH) is the grid: exercises the padding.
    pixels_h = (grid_h - 1) * PATCH + draw(st.integers(1, PATCH))
    pixels_w = (grid_w - 1) * PATCH + draw(st.integers(1, PATCH))
    with_cls = draw(st.booleans())
    out_types = ['raw', 'featmap', 'avg_featmap'] + (['cls_token'] if with_cls else [])
    return dict(
        grid_hw=(grid_h, grid_w),
        pixels_hw=(pixels_h, pixels_w),
        batch=draw(st.integers(1, 3)),
        with_cls_token=with_cls,
        num_register_tokens=draw(st.integers(0, 2)),
        embed_dims=draw(st.sampled_from([16, 32])),
        num_layers=draw(st.integers(1, 2)),
        out_type=draw(st.sampled_from(out_types)),
        seed=draw(st.integers(0, 2**16)),
    )


def expected_shape(case: dict) -> tuple:
    """Output shape from the case alone (not from the model)."""
    batch, channels = case['batch'], case['embed_dims']
    height, width = case['grid_hw']
    num_prefix = int(case['with_cls_token']) + case['num_register_tokens']
    return {
        'raw': (batch, num_prefix + height * width, channels),
        'featmap': (batch, channels, height, width),
        'avg_featmap': (batch, channels),
        'cls_token': (batch, channels),
    }[case['out_type']]


def assert_trains(model: PosEncViT, images: torch.Tensor, shape: tuple, label: str) -> None:
    images = images.clone().requires_grad_(True)
    outs = model(images)
    assert len(outs) == 1
    (out, ) = outs
    assert tuple(out.shape) == shape, f'{label}: shape {tuple(out.shape)} != {shape}'
    assert torch.isfinite(out).all(), f'{label}: non-finite output'
    # A loss that weights tokens differently, so no gradient vanishes by symmetry.
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all(), \
        f'{label}: non-finite input gradient'
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), f'{label}: non-finite gradient in {name}'


@pytest.mark.parametrize('encoding', ENCODINGS + STACKS)
@SETTINGS
@given(case=model_and_input())
def test_forward_backward_on_any_grid(encoding, case):
    torch.manual_seed(case['seed'])
    model = tiny_vit(encoding, embed_dims=case['embed_dims'],
                     num_layers=case['num_layers'], with_cls_token=case['with_cls_token'],
                     num_register_tokens=case['num_register_tokens'],
                     out_type=case['out_type'])
    images = torch.randn(case['batch'], 3, *case['pixels_hw'])
    assert_trains(model, images, expected_shape(case), f'{encoding} {case}')
    # The encoding's own parameters are reached by the gradient (finite was
    # checked above); at least one of them gets a non-zero one.
    own = [p for p in model.pos_encoding.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in own), f'{encoding}: a parameter got no gradient'


@SETTINGS
@given(
    grid_hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    batch=st.integers(1, 3),
    num_register_tokens=st.integers(0, 2),
    with_cls=st.booleans(),
    distance=st.sampled_from(['l2', 'rms', 'squared']),
    impl=st.sampled_from(['auto', 'dense', 'chunked']),
    noise=st.sampled_from([0., 1e-9, 1e-6]),
    value=st.floats(-3, 3),
)
def test_sape2_coinciding_vectors_give_finite_gradients(grid_hw, batch, num_register_tokens,
                                                        with_cls, distance, impl, noise, value):
    """Constant images: every patch token, hence every SaPE vector, is the same
    (up to ``noise``), so all distances are (near) 0 -- the sqrt's singular point."""
    if impl == 'chunked' and distance == 'squared':
        impl = 'auto'  # 'fused'
    torch.manual_seed(0)
    pos_encoding = dict(type='SaPE2', distance=distance, impl=impl, chunk_size=5)
    model = tiny_vit(pos_encoding, num_layers=2, with_cls_token=with_cls,
                     num_register_tokens=num_register_tokens)
    height, width = grid_hw
    images = torch.full((batch, 3, height * PATCH, width * PATCH), value)
    images = images + noise * torch.randn_like(images)
    num_prefix = int(with_cls) + num_register_tokens
    assert_trains(model, images, (batch, num_prefix + height * width, 16),
                  f'SaPE2 constant image {grid_hw} {distance} {impl}')
    tables = [p.grad for p in model.pos_encoding.position_tables.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in tables)


def test_sape2_constant_image_equals_plain_attention():
    """Independent expectation: coinciding SaPE vectors give a zero bias, so on a
    constant image a SaPE² ViT computes exactly what the same ViT without a
    position encoding computes."""
    torch.manual_seed(0)
    sape = tiny_vit(dict(type='SaPE2'), num_layers=2, num_register_tokens=1).eval()
    plain = tiny_vit(dict(type='NoPositionEncoding'), num_layers=2,
                     num_register_tokens=1).eval()
    state = {k: v for k, v in sape.state_dict().items() if not k.startswith('pos_encoding.')}
    plain.load_state_dict(state)
    images = torch.full((2, 3, 3 * PATCH, 5 * PATCH), 0.7)
    torch.testing.assert_close(sape(images)[0], plain(images)[0], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(num_vectors=st.integers(1, 12), length=st.integers(1, 9),
       num_duplicates=st.integers(0, 12), scale=st.sampled_from([1e-3, 1., 1e3]),
       seed=st.integers(0, 2**16))
def test_pairwise_l2_matches_cdist_with_finite_gradients(num_vectors, length, num_duplicates,
                                                         scale, seed):
    """The matmul-form distance equals ``torch.cdist`` (float64 reference), and
    its gradient is finite even when vectors repeat (distance exactly 0)."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(num_vectors, length, generator=generator) * scale
    duplicates = torch.randint(0, num_vectors, (num_duplicates, ), generator=generator)
    vectors = torch.cat([vectors, vectors[duplicates]]).requires_grad_(True)
    distances = pairwise_l2(*squared_distance_factors(vectors))
    reference = torch.cdist(vectors.detach().double(), vectors.detach().double())
    # float32 matmul form: absolute error ~ sqrt(eps) * |s| near 0.
    tolerance = 1e-3 * scale * math.sqrt(length)
    torch.testing.assert_close(distances.double(), reference, rtol=1e-4, atol=tolerance)
    assert torch.equal(distances.diagonal(), torch.zeros(len(vectors)))
    distances.sum().backward()
    assert torch.isfinite(vectors.grad).all()
