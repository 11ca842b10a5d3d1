"""Resolution sweep: sizes, pipeline overrides, and the CLI end to end."""
import csv

import pytest

from mmsape.analysis.resolution import (
    CSV_COLUMNS,
    describe_size,
    format_table,
    override_test_resize,
    parse_size,
    sweep_sizes,
)

from builders import load_tool


def test_sweep_sizes_square_and_non_square():
    sizes = sweep_sizes((32, 32), scales=(0.5, 1, 2), aspects=(0.5, 1, 2))
    hw = [(s['height'], s['width']) for s in sizes]
    assert (16, 16) in hw and (64, 64) in hw
    assert (32, 64) in hw and (64, 32) in hw  # 1:2 and 2:1 at scale 1
    assert len(hw) == len(set(hw)) == 9
    assert parse_size('24') == (24, 24) and parse_size('32x64') == (32, 64)
    with pytest.raises(ValueError):
        parse_size('32by64')
    assert describe_size(64, 64, (32, 32))['scale'] == 2.0


def test_override_test_resize_per_task():
    cls = [dict(type='LoadImageFromFile'), dict(type='ResizeEdge', scale=64, edge='short'),
           dict(type='PackInputs')]
    out = override_test_resize(cls, 48, 96)
    assert out[1] == dict(type='Resize', scale=(96, 48), keep_ratio=False)
    assert cls[1]['type'] == 'ResizeEdge'  # the input is not modified
    imagenet = [dict(type='LoadImageFromFile'),
                dict(type='ResizeEdge', scale=256, edge='short'),
                dict(type='CenterCrop', crop_size=224), dict(type='PackInputs')]
    out = override_test_resize(imagenet, 384, 384)
    assert out[1]['scale'] == 439 and out[2]['crop_size'] == (384, 384)
    seg = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(320, 160), keep_ratio=True),
           dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
    assert override_test_resize(seg, 80, 160)[1] == dict(type='Resize', scale=(160, 80),
                                                         keep_ratio=False)
    with pytest.raises(ValueError, match='no'):
        override_test_resize([dict(type='PackInputs')], 8, 8)


def test_resolution_sweep_cli(tiny_models, tmp_path, capsys):
    tool = load_tool('resolution_sweep')
    out = tmp_path / 'sweep'
    argv = ['--threads', '1', '--sizes', '32', '48x96', '--metrics', 'accuracy/top1',
            '--out-dir', str(out)]
    for name in ('none', 'ape'):
        argv += ['--model', *tiny_models[name]]
    assert tool.main(argv) == 0
    assert (out / 'resolution_sweep.png').stat().st_size > 0
    with open(out / 'resolution_sweep.csv') as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 2 * 2  # 2 models x 2 sizes x 1 metric
    assert {(r['height'], r['width']) for r in rows} == {('32', '32'), ('48', '96')}
    assert all(r['metric'] == 'accuracy/top1' and 0 <= float(r['value']) <= 100 for r in rows)
    assert '| model | metric | 32x32 | 48x96 |' in capsys.readouterr().out
    assert 'ape.pth' in format_table(rows)
