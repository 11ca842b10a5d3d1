"""PE maps, the visualisation / FLOPs CLIs and the study's building blocks."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mmsape.analysis.pe_maps import (
    attention_map,
    capture_qk,
    embedding_similarity,
    feature_similarity,
    sape2_bias_map,
    token_grid,
)
from mmsape.models import PosEncViT

ROOT = Path(__file__).resolve().parents[2]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / 'tools' / 'analysis' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_vit(pos_encoding, **kwargs) -> PosEncViT:
    torch.manual_seed(0)
    return PosEncViT(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                               feedforward_channels=64),
                     img_size=(24, 32), patch_size=4, pos_encoding=pos_encoding,
                     **kwargs).eval()


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
                                          dict(type='SaPE2'), dict(type='CoPE1D')])
def test_attention_map_is_a_distribution(pos_encoding):
    model = tiny_vit(pos_encoding, with_cls_token=False, out_type='avg_featmap')
    weights = attention_map(model, torch.randn(1, 3, 24, 32), 0, (1, 1))
    assert weights.shape == (1, 6, 8)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)


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
    assert tool.main(['--arch', 'tiny', '--shape', '32', '48', '--repeats', '1',
                      '--threads', '1', '--encodings', 'none', 'SaPE2 query']) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith('| ')]
    assert lines[0].startswith('| encoding | params (M) | GFLOPs')
    none, sape = lines[1].split('|'), lines[2].split('|')
    assert float(sape[2]) > float(none[2])  # the tables are parameters
    assert float(none[3]) > 0


def test_pe_study_building_blocks(tmp_path):
    pytest.importorskip('sklearn')
    study = load_tool('pe_study')
    x_train, y_train, x_test, y_test = study.digits_canvases()
    assert x_train.shape[1:] == (1, study.CANVAS, study.CANVAS)
    assert len(y_train) + len(y_test) == 1797
    data = (x_train[:96], y_train[:96], x_test[:64], y_test[:64])
    results = [study.train_digits(name, 0, 1, True, data) for name in ('APE', 'none')]
    sizes = {f'{h}x{w}' for h, w in study.DIGIT_EVAL_SIZES}
    assert set(results[0]['acc']) == sizes
    args = study.parse_args(['--quick', '--out', str(tmp_path)])
    report = study.write_report(args, results, [], wall_s=1.)
    assert (tmp_path / 'README.md').exists() and (tmp_path / 'digits_resolution.png').exists()
    assert '| APE |' in report and '| none |' in report
    # The model without position encoding is exactly equivariant under whole-patch rolls.
    none_rows = [r for r in results[1]['equivariance']
                 if r['shift_x'] % study.PATCH == 0 and r.get('mode') != 'crop']
    assert all(abs(r['cosine'] - 1) < 1e-5 for r in none_rows)
