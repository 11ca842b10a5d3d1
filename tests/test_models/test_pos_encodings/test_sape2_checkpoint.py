"""Checkpoints of the SaPE² authors' code load into PosEncViT and compute what
their model computes.

The reference below reimplements the authors' DeiT-style model from its layer
semantics (their ``cope_vit_models`` with ``CoPE2dAttention_v2``, mode 0, no
wavelet branch) with explicit loops over tokens for the SaPE² bias: per axis
and token, gates ``sigmoid(q . k * scale)`` over the token's line, positions
``flip / cumsum / flip`` clamped at ``npos_max - 1``, ``u . pos_emb[:, t]``
interpolated between ``floor`` and ``ceil``, Euclidean distances between the
tokens' vectors, added after the scaling of ``q . k``; blocks without
LayerScale (their block's forward ignores ``gamma_1`` / ``gamma_2``).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsape.models import PosEncViT
from mmsape.models.pos_encodings import SaPE2
from mmsape.models.pos_encodings.sape2_checkpoint import is_authors_sape2_state

EMBED, HEADS, DEPTH, PATCH, IMAGE, NPOS = 16, 2, 2, 4, 20, 4
HEAD_DIMS = EMBED // HEADS


def authors_state_dict(seed=0):
    """A state dict with the authors' keys and shapes (a tiny model)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, std=0.3):
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * std

    side = IMAGE // PATCH
    state = {'cls_token': randn(1, 1, EMBED), 'pos_embed': randn(1, side * side + 1, EMBED),
             'patch_embed.proj.weight': randn(EMBED, 3, PATCH, PATCH),
             'patch_embed.proj.bias': randn(EMBED), 'norm.weight': 1 + randn(EMBED),
             'norm.bias': randn(EMBED), 'head.weight': randn(10, EMBED), 'head.bias': randn(10)}
    for i in range(DEPTH):
        p = f'blocks.{i}.'
        state.update({
            p + 'norm1.weight': 1 + randn(EMBED), p + 'norm1.bias': randn(EMBED),
            p + 'attn.qkv.weight': randn(3 * EMBED, EMBED), p + 'attn.qkv.bias': randn(3 * EMBED),
            p + 'attn.proj.weight': randn(EMBED, EMBED), p + 'attn.proj.bias': randn(EMBED),
            p + 'norm2.weight': 1 + randn(EMBED), p + 'norm2.bias': randn(EMBED),
            p + 'mlp.fc1.weight': randn(2 * EMBED, EMBED), p + 'mlp.fc1.bias': randn(2 * EMBED),
            p + 'mlp.fc2.weight': randn(EMBED, 2 * EMBED), p + 'mlp.fc2.bias': randn(EMBED),
            # Unused by their block's forward: LayerScale factors and mode-1 gate keys.
            p + 'gamma_1': randn(EMBED), p + 'gamma_2': randn(EMBED),
            p + 'attn.cope.cope_x.w_k': torch.zeros(1, HEAD_DIMS, HEAD_DIMS, dtype=torch.float64),
            p + 'attn.cope.cope_y.w_k': torch.zeros(1, HEAD_DIMS, HEAD_DIMS, dtype=torch.float64),
            p + 'attn.cope.cope_x.pos_emb': randn(1, HEAD_DIMS, NPOS, std=1.),
            p + 'attn.cope.cope_y.pos_emb': randn(1, HEAD_DIMS, NPOS, std=1.),
        })
    return state


def authors_axis_vectors(q, k, pos_emb, embed_with, scale):
    """(L, L) vectors of the L tokens of one line (rows of q, k)."""
    length = q.shape[0]
    vectors = torch.zeros(length, length, dtype=q.dtype)
    for i in range(length):
        gates = [torch.sigmoid(torch.dot(q[i] * scale, k[j])) for j in range(length)]
        u = q[i] if embed_with == 'query' else k[i]
        for m in range(length):
            position = torch.clamp(sum(gates[m:]), max=NPOS - 1)
            floor, ceil = math.floor(position.item()), math.ceil(position.item())
            weight = position - floor
            vectors[i, m] = (torch.dot(u, pos_emb[0, :, ceil]) * weight
                             + torch.dot(u, pos_emb[0, :, floor]) * (1 - weight))
    return vectors


def authors_forward(state, images, embed_with):
    """Final-norm tokens of the authors' model, from its layer semantics."""
    x = F.conv2d(images, state['patch_embed.proj.weight'], state['patch_embed.proj.bias'],
                 stride=PATCH)
    batch, _, height, width = x.shape
    x = torch.cat([state['cls_token'].expand(batch, -1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = x + state['pos_embed']
    scale = HEAD_DIMS**-0.5
    num_tokens = x.shape[1]
    for i in range(DEPTH):
        p = f'blocks.{i}.'
        y = F.layer_norm(x, (EMBED, ), state[p + 'norm1.weight'], state[p + 'norm1.bias'], 1e-6)
        qkv = F.linear(y, state[p + 'attn.qkv.weight'], state[p + 'attn.qkv.bias'])
        q, k, v = qkv.reshape(batch, num_tokens, 3, HEADS, HEAD_DIMS).permute(2, 0, 3, 1, 4)
        logits = (q * scale) @ k.transpose(-2, -1)
        for b in range(batch):
            for h in range(HEADS):
                grid_q = q[b, h, 1:].reshape(height, width, HEAD_DIMS)
                grid_k = k[b, h, 1:].reshape(height, width, HEAD_DIMS)
                x_vectors = torch.stack([authors_axis_vectors(
                    grid_q[r], grid_k[r], state[p + 'attn.cope.cope_x.pos_emb'], embed_with,
                    scale) for r in range(height)])  # (row, column, W)
                y_vectors = torch.stack([authors_axis_vectors(
                    grid_q[:, c], grid_k[:, c], state[p + 'attn.cope.cope_y.pos_emb'],
                    embed_with, scale) for c in range(width)])  # (column, row, H)
                for n in range(height * width):
                    for m in range(height * width):
                        (rn, cn), (rm, cm) = divmod(n, width), divmod(m, width)
                        logits[b, h, 1 + n, 1 + m] += (
                            (x_vectors[rn, cn] - x_vectors[rm, cm]).norm()
                            + (y_vectors[cn, rn] - y_vectors[cm, rm]).norm())
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, num_tokens, EMBED)
        x = x + F.linear(out, state[p + 'attn.proj.weight'], state[p + 'attn.proj.bias'])
        y = F.layer_norm(x, (EMBED, ), state[p + 'norm2.weight'], state[p + 'norm2.bias'], 1e-6)
        y = F.linear(F.gelu(F.linear(y, state[p + 'mlp.fc1.weight'], state[p + 'mlp.fc1.bias'])),
                     state[p + 'mlp.fc2.weight'], state[p + 'mlp.fc2.bias'])
        x = x + y
    return F.layer_norm(x, (EMBED, ), state['norm.weight'], state['norm.bias'], 1e-6)


def mmsape_model(embed_with='query', **sape_options):
    return PosEncViT(
        arch=dict(embed_dims=EMBED, num_layers=DEPTH, num_heads=HEADS,
                  feedforward_channels=2 * EMBED),
        img_size=IMAGE, patch_size=PATCH, out_type='raw',
        pos_encoding=[dict(type='LearnedAPE'),
                      dict(type='SaPE2', num_positions=NPOS, embed_with=embed_with,
                           **sape_options)]).double().eval()


@pytest.mark.parametrize('embed_with', ['query', 'key'])
def test_authors_checkpoint_gives_the_authors_model(tmp_path, embed_with):
    state = authors_state_dict()
    assert is_authors_sape2_state(state)
    path = tmp_path / 'authors.pth'
    torch.save({'model': state}, path)  # their main.py saves {'model': ...}
    model = mmsape_model(embed_with)
    model.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    model.init_weights()
    tables = model.pos_encoding.encodings[1].position_tables['1']
    torch.testing.assert_close(tables[0], state['blocks.1.attn.cope.cope_x.pos_emb'][0].T)
    torch.testing.assert_close(tables[1], state['blocks.1.attn.cope.cope_y.pos_emb'][0].T)
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    with torch.no_grad():
        (actual, ) = model(images)
    expected = authors_forward(state, images, embed_with)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


def convert(model: PosEncViT, state: dict) -> tuple:
    """``(converted state, dropped keys)``: what the model's SaPE² makes of an
    authors' state dict, asked as the backbone's load hook asks it."""
    state = dict(state)
    parts = getattr(model.pos_encoding, 'encodings', [model.pos_encoding])
    (index, sape), = [(i, part) for i, part in enumerate(parts) if isinstance(part, SaPE2)]
    prefix = f'pos_encoding.encodings.{index}.' if len(parts) > 1 else 'pos_encoding.'
    return state, sape.convert_checkpoint_keys(state, prefix)


def test_conversion_drops_unused_parameters_and_checks_the_model():
    state = authors_state_dict()
    assert SaPE2.foreign_checkpoint_source(state) == 'sape2-authors'
    converted, dropped = convert(mmsape_model(), state)
    assert set(dropped) == {f'blocks.{i}.{name}' for i in range(DEPTH) for name in (
        'gamma_1', 'gamma_2', 'attn.cope.cope_x.w_k', 'attn.cope.cope_y.w_k')}
    assert not any('cope' in key for key in converted)
    assert converted['pos_encoding.encodings.1.position_tables.0'].shape == (2, NPOS, HEAD_DIMS)
    with pytest.raises(ValueError, match='num_positions=4'):
        convert(_model_with_positions(NPOS + 1), state)
    with pytest.raises(ValueError, match="count_from"):
        convert(mmsape_model(count_from='query', bias='lookup'), state)
    with pytest.raises(ValueError, match='has no SaPE2'):
        PosEncViT(arch=dict(embed_dims=EMBED, num_layers=DEPTH, num_heads=HEADS,
                            feedforward_channels=2 * EMBED),
                  img_size=IMAGE, patch_size=PATCH).load_state_dict(state)
    state['blocks.0.attn.cope.cope_x.w_k'] = torch.ones(1, HEAD_DIMS, HEAD_DIMS)
    with pytest.raises(ValueError, match='mode=1'):
        convert(mmsape_model(), state)


def test_a_refused_checkpoint_is_left_unchanged():
    """The checks all run before the state dict is changed."""
    state = authors_state_dict()
    before = dict(state)
    with pytest.raises(ValueError, match='num_positions=4'):
        _model_with_positions(NPOS + 1).pos_encoding.convert_checkpoint_keys(
            state, 'pos_encoding.')
    assert state.keys() == before.keys()
    assert all(state[key] is value for key, value in before.items())


def test_other_checkpoints_pass_unchanged():
    """Keys of another layout (timm's) are not the SaPE²'s to convert."""
    state = {key: value for key, value in authors_state_dict().items() if 'cope' not in key}
    converted, dropped = convert(mmsape_model(), state)
    assert SaPE2.foreign_checkpoint_source(state) is None
    assert dropped == [] and converted == state


def _model_with_positions(num_positions):
    return PosEncViT(
        arch=dict(embed_dims=EMBED, num_layers=DEPTH, num_heads=HEADS,
                  feedforward_channels=2 * EMBED),
        img_size=IMAGE, patch_size=PATCH,
        pos_encoding=dict(type='SaPE2', num_positions=num_positions))
