"""The contracts every attention-level encoding shares: the ``layers`` gate,
``tokens`` accepted by every attention hook and, for bias encodings,
``attention_bias`` as what the attention adds."""
import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mmsape.models.pos_encodings import (
    AttentionBiasPositionEncoding,
    AttentionPositionEncoding,
    TokenGrid,
    build_pos_encoding,
)

BACKBONE = dict(embed_dims=16, num_heads=2, num_layers=4)
GRID = TokenGrid(2, 3, num_prefix=1)
ATTENTION_ENCODINGS = [dict(type='CoPE1D'), dict(type='RoPE2D'), dict(type='RoPE2D', mode='mixed'),
                       dict(type='SaPE2', impl='dense'), dict(type='SaPE2', impl='chunked'),
                       dict(type='ALiBi2D'), dict(type='LookHere'),
                       dict(type='PaPE', parabolas=2, prefix_position='none'),
                       dict(type='PaPE', parabolas=2, prefix_position='none', impl='dense')]
BIAS_ENCODINGS = [cfg for cfg in ATTENTION_ENCODINGS if cfg['type'] != 'RoPE2D']


@pytest.fixture(autouse=True, scope='module')
def register_project():
    import projects.alibi2d.alibi2d  # noqa: F401  (what custom_imports does)


def qkv(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 2, GRID.num_tokens, 8, generator=generator, dtype=dtype)
            for _ in range(3)]


def attention_tokens(dtype=torch.float64):
    """The attention's (B, N, C) input, which the backbone passes as ``tokens``."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, GRID.num_tokens, BACKBONE['embed_dims'], generator=generator,
                       dtype=dtype)


@pytest.mark.parametrize('cfg', ATTENTION_ENCODINGS, ids=str)
def test_blocks_outside_layers_attend_plainly(cfg):
    encoding = build_pos_encoding({**cfg, 'layers': [1, -1]}, **BACKBONE).double()
    assert isinstance(encoding, AttentionPositionEncoding) and encoding.acts_in_attention
    assert encoding.layers == (1, 3)
    q, k, v = qkv()
    tokens = attention_tokens()
    plain = F.scaled_dot_product_attention(q, k, v)
    for layer in (0, 2):
        torch.testing.assert_close(encoding.attention(layer, q, k, v, GRID, tokens=tokens),
                                   plain, rtol=0, atol=0)
    assert not torch.allclose(encoding.attention(1, q, k, v, GRID, tokens=tokens), plain)


@pytest.mark.parametrize('cfg', BIAS_ENCODINGS, ids=str)
def test_attention_adds_the_attention_bias(cfg):
    encoding = build_pos_encoding(cfg, **BACKBONE).double()
    assert isinstance(encoding, AttentionBiasPositionEncoding)
    q, k, v = qkv()
    tokens = attention_tokens()
    bias = encoding.attention_bias(2, q, k, GRID, tokens=tokens)
    # Prefix rows and columns unbiased.
    assert bias[..., :1, :].abs().max() == 0 and bias[..., :, :1].abs().max() == 0
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    expected = torch.softmax(logits, dim=-1) @ v
    torch.testing.assert_close(encoding.attention(2, q, k, v, GRID, tokens=tokens), expected,
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('cfg', ATTENTION_ENCODINGS, ids=str)
def test_layers_option_names_the_bad_index(cfg):
    with pytest.raises(ValueError, match='layers contains 4'):
        build_pos_encoding({**cfg, 'layers': [0, 4]}, **BACKBONE)


@pytest.mark.parametrize('hook', ['attention', 'encoded_attention', 'attention_bias'])
def test_attention_hook_without_tokens_is_refused_when_defined(hook):
    """The backbone passes ``tokens`` to every attention hook: an override written
    for the former signature fails when its class is defined, naming the fix."""
    signatures = {
        'attention': 'layer_index, q, k, v, grid, dropout_p=0.',
        'encoded_attention': 'layer_index, q, k, v, grid, dropout_p=0.',
        'attention_bias': 'layer_index, q, k, grid',
    }
    namespace = {}
    exec(f'def {hook}(self, {signatures[hook]}):\n    return q', namespace)
    with pytest.raises(TypeError, match=rf'Former.{hook} does not accept `tokens`.*Add '
                                        r'`tokens: Optional\[Tensor\] = None`'):
        type('Former', (AttentionBiasPositionEncoding, ), {hook: namespace[hook]})


def test_attention_hooks_with_tokens_or_kwargs_are_accepted():
    class WithTokens(AttentionBiasPositionEncoding):

        def attention_bias(self, layer_index: int, q: Tensor, k: Tensor, grid: TokenGrid,
                           tokens: Optional[Tensor] = None) -> Tensor:
            if tokens is None:  # a bias that changes the attention
                return torch.arange(float(q.shape[-2]), dtype=q.dtype)[None]
            return tokens.new_zeros(1, 1)

    class WithKwargs(WithTokens):

        def encoded_attention(self, layer_index, q, k, v, grid, **options):
            return super().encoded_attention(layer_index, q, k, v, grid, **options)

    q, k, v = qkv()
    plain = F.scaled_dot_product_attention(q, k, v)
    for encoding_cls in (WithTokens, WithKwargs):
        encoding = encoding_cls(**BACKBONE).double()
        # The tokens reach attention_bias: zero bias with them, another without.
        torch.testing.assert_close(
            encoding.attention(0, q, k, v, GRID, tokens=attention_tokens()), plain)
        assert not torch.allclose(encoding.attention(0, q, k, v, GRID), plain)
