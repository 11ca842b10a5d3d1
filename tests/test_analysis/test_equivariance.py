"""Translation-equivariance scores: exact for a model equivariant by construction."""
import csv
from functools import partial

import pytest
import torch
from torch import nn

from mmsape.analysis.equivariance import (
    featmap_equivariance,
    fractional_roll,
    logit_invariance,
    pixel_shifts,
    shifted_views,
)

import builders
from builders import load_tool

TOL = 1e-5


tiny_vit = partial(builders.tiny_vit, num_layers=3, num_heads=2, patch_size=4, seed=0)


def test_fractional_roll_matches_roll_and_interpolates():
    x = torch.randn(1, 2, 5, 6)
    assert torch.equal(fractional_roll(x, 2, -1), torch.roll(x, (2, -1), dims=(-2, -1)))
    half = fractional_roll(x, 0, 0.5)
    assert torch.allclose(half, 0.5 * x + 0.5 * torch.roll(x, 1, dims=-1))


def test_shifted_views_crop_alignment():
    x = torch.arange(64.).reshape(1, 1, 8, 8)
    ref, shifted = shifted_views(x, (2, 2), 'crop')
    assert ref.shape == shifted.shape == (1, 1, 6, 6)
    # shifted[i + dy, j + dx] shows what ref shows at [i, j]
    assert torch.equal(shifted[..., 2:, 2:], ref[..., :4, :4])
    with pytest.raises(ValueError, match='non-negative'):
        shifted_views(x, (-1, 0), 'crop')


def test_no_position_encoding_is_exactly_equivariant():
    model = tiny_vit(dict(type='NoPositionEncoding'))
    images = torch.randn(3, 3, 32, 32)
    rows = featmap_equivariance(model, images, pixel_shifts(4, [1, 2, 3]), 'circular')
    assert len(rows) == 3 * model.num_layers
    for row in rows:
        assert row['cosine'] == pytest.approx(1.0, abs=TOL)
        assert row['rel_score'] == pytest.approx(1.0, abs=1e-4)
    head = nn.Linear(32, 5)
    logits = logit_invariance(lambda x: head(model(x)[-1]), images,
                              pixel_shifts(4, [1, 2]), 4)
    for row in logits:
        assert row['logit_cosine'] == pytest.approx(1.0, abs=TOL)
        assert row['top1_agreement'] == 1.0


def test_ape_is_not_equivariant():
    model = tiny_vit(dict(type='LearnedAPE'))
    with torch.no_grad():
        model.pos_encoding.pos_embed.normal_(std=1.)
    rows = featmap_equivariance(model, torch.randn(2, 3, 32, 32), [(4, 4)], 'circular')
    assert max(row['cosine'] for row in rows) < 0.99


def test_sub_patch_shift_and_crop_mode():
    model = tiny_vit(dict(type='NoPositionEncoding'), with_cls_token=False,
                     out_type='avg_featmap')
    images = torch.randn(1, 3, 30, 34)  # cropped to 28 x 32 inside
    rows = featmap_equivariance(model, images, [(0, 2)], 'circular')
    assert all(row['cosine'] < 1 - 1e-3 for row in rows)  # patch contents change
    crop_rows = featmap_equivariance(model, images, [(4, 8)], 'crop')
    assert len(crop_rows) == model.num_layers
    with pytest.raises(ValueError, match='multiple of the patch'):
        featmap_equivariance(model, images, [(2, 0)], 'crop')
    assert model.out_type == 'avg_featmap'  # restored after the analysis


def test_equivariance_cli(tiny_models, tmp_path):
    tool = load_tool('equivariance')
    out = tmp_path / 'eq'
    args = ['--threads', '1', '--num-images', '4', '--patch-shifts', '1', '2',
            '--sub-patch-offsets', '4', '--out-dir', str(out)]
    for name in ('none', 'ape'):
        args += ['--model', *tiny_models[name]]
    assert tool.main(args) == 0
    assert (out / 'equivariance.png').stat().st_size > 0
    with open(out / 'equivariance.csv') as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == tool.CSV_COLUMNS
        rows = list(reader)
    whole = [r for r in rows if int(r['layer']) >= 0 and int(r['shift_x']) % 8 == 0]
    none = [float(r['cosine']) for r in whole if r['model'].endswith('none.pth')]
    ape = [float(r['cosine']) for r in whole if r['model'].endswith('ape.pth')]
    assert len(none) == len(ape) == 2 * 2  # 2 whole-patch shifts x 2 blocks
    assert all(abs(v - 1) < TOL for v in none)
    assert max(ape) < 0.99
    logits = [r for r in rows if int(r['layer']) < 0 and r['model'].endswith('none.pth')
              and int(r['shift_x']) % 8 == 0]
    assert logits and all(float(r['top1_agreement']) == 1.0 for r in logits)
