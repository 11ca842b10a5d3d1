"""PE maps and the visualisation / FLOPs CLIs."""
from functools import partial

import pytest
import torch

from mmsape.analysis.pe_maps import (
    attention_map,
    capture_attention_inputs,
    capture_qk,
    embedding_similarity,
    feature_similarity,
    sape2_bias_map,
    token_grid,
)

import builders
from builders import load_tool

tiny_vit = partial(builders.tiny_vit, num_heads=2, img_size=(24, 32), patch_size=4, seed=0)


def test_sape2_bias_map_is_the_bias_row():
    model = tiny_vit(dict(type='SaPE2'))
    images = torch.randn(2, 3, 24, 32)
    grid = token_grid(model, images)
    bias_map = sape2_bias_map(model, images, 1, (2, 3))
    assert bias_map.shape == (2, 6, 8)
    q, k = capture_qk(model, images, 1)
    full = model.pos_encoding.attention_bias(1, q, k, grid)
    row = grid.num_prefix + 2 * 8 + 3
    assert torch.allclose(bias_map, full[:, :, row, 1:].mean(1).reshape(2, 6, 8))
    assert bias_map[:, 2, 3].abs().max() < 1e-4  # distance of a patch to itself
    with pytest.raises(ValueError, match='no SaPE2'):
        sape2_bias_map(tiny_vit(dict(type='LearnedAPE')), images, 0, (0, 0))


@pytest.mark.parametrize('pos_encoding', [dict(type='RoPE2D', mode='mixed'),
                                          dict(type='SaPE2'), dict(type='CoPE1D'),
                                          dict(type='PaPE')])  # PaPE reads the tokens
def test_attention_map_is_a_distribution(pos_encoding):
    model = tiny_vit(pos_encoding, with_cls_token=False, out_type='avg_featmap')
    weights = attention_map(model, torch.randn(1, 3, 24, 32), 0, (1, 1))
    assert weights.shape == (1, 6, 8)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_captured_tokens_are_the_qkv_input():
    model = tiny_vit(dict(type='PaPE', parabolas=2))
    images = torch.randn(2, 3, 24, 32)
    q, k, tokens = capture_attention_inputs(model, images, 1)
    assert tokens.shape == (2, 1 + 6 * 8, 32)
    qkv = model.blocks[1].attn.qkv(tokens).reshape(2, 49, 3, 2, 16).permute(2, 0, 3, 1, 4)
    assert torch.equal(qkv[0], q) and torch.equal(qkv[1], k)
    assert all(torch.equal(a, b) for a, b in zip(capture_qk(model, images, 1), (q, k)))


def test_similarity_maps():
    model = tiny_vit(dict(type='LearnedAPE'))
    name, sim = embedding_similarity(model, (6, 8), (2, 3))
    assert name == 'learned APE' and sim.shape == (1, 6, 8)
    assert sim[0, 2, 3].item() == pytest.approx(1.0, abs=1e-5)
    _, rope_sim = embedding_similarity(tiny_vit(dict(type='RoPE2D')), (6, 8), (0, 0))
    assert rope_sim[0, 0, 0].item() == pytest.approx(1.0, abs=1e-5)
    feats = feature_similarity(model, torch.zeros(1, 3, 24, 32), 1, (2, 3))
    assert feats.shape == (1, 6, 8) and feats.min() < 0.999  # APE: position on blank input
    none = tiny_vit(dict(type='NoPositionEncoding'))
    blank = feature_similarity(none, torch.zeros(1, 3, 24, 32), 1, (2, 3))
    assert torch.allclose(blank, torch.ones_like(blank), atol=1e-5)  # nothing to tell apart


def test_visualize_pe_cli(tiny_models, tmp_path):
    tool = load_tool('visualize_pe')
    config, ckpt = tiny_models['ape']
    assert tool.main([config, ckpt, '--layer', '1', '--out-dir', str(tmp_path),
                      '--name', 'ape']) == 0
    assert (tmp_path / 'pe_maps_ape.png').stat().st_size > 0


def test_get_flops_cli(capsys):
    tool = load_tool('get_flops')
    assert tool.main(['--arch', 'deit-tiny', '--shape', '32', '48', '--repeats', '1',
                      '--threads', '1', '--encodings', 'none', 'sape2']) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith('| ')]
    assert lines[0].startswith('| encoding | params (M) | GFLOPs')
    none, sape = lines[1].split('|'), lines[2].split('|')
    assert float(sape[2]) > float(none[2])  # the tables are parameters
    assert float(none[3]) > 0

