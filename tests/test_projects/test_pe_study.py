"""The position-encoding study (projects/pe_study): its pieces and its CLI."""
import json

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmsape.utils.config_entries import find_entry, find_entry_index
from projects.pe_study.study import digits as study
from projects.pe_study.study import encodings, jobs, report
from projects.pe_study.study.segmentation import (
    SEG_BASE,
    SEG_CLASSES,
    SEG_CONFIG,
    SEG_ENCODINGS,
    seg_config,
    seg_sizes,
)

from builders import ROOT, load_script


def test_pe_study_building_blocks(tmp_path):
    pytest.importorskip('sklearn')
    x_train, y_train, x_test, y_test = study.digits_canvases()
    assert x_train.shape[1:] == (1, study.CANVAS, study.CANVAS)
    assert len(y_train) + len(y_test) == 1797
    data = (x_train[:96], y_train[:96], x_test[:64], y_test[:64])
    results = [study.train_digits(name, 0, 1, True, data) for name in ('APE', 'none')]
    sizes = {f'{h}x{w}' for h, w in study.DIGIT_EVAL_SIZES}
    assert set(results[0]['acc']) == sizes
    tool = load_script('projects/pe_study/run.py')
    args = tool.parse_args(['--quick', '--out', str(tmp_path)])
    report_text = tool.write_report(args, results, [], wall_s=1.)
    assert (tmp_path / 'README.md').exists() and (tmp_path / 'digits_resolution.png').exists()
    assert '| APE |' in report_text and '| none |' in report_text
    # The model without position encoding is exactly equivariant under whole-patch rolls.
    none_rows = [r for r in results[1]['equivariance']
                 if r['shift_x'] % study.PATCH == 0 and r.get('mode') != 'crop']
    assert all(abs(r['cosine'] - 1) < 1e-5 for r in none_rows)
    # The extrapolation protocol's sizes: 1x, 1.5x, 2x and 3x the training canvas.
    assert {study.size_key((round(24 * s), ) * 2) for s in study.DIGIT_SCALES} <= sizes
    with pytest.raises(ValueError, match='training'):
        study.train_digits('none', 0, 1, True, data, training='cropped')


def test_random_translate_is_translate_per_image():
    images = torch.randn(6, 1, 24, 24)
    generator = torch.Generator().manual_seed(3)
    moved = study.random_translate(images, 4, generator)
    shifts = torch.randint(-4, 5, (6, 2), generator=torch.Generator().manual_seed(3))
    for image, out, (dy, dx) in zip(images, moved, shifts.tolist()):
        assert -4 <= dy <= 4 and -4 <= dx <= 4
        torch.testing.assert_close(out, study.translate(image, dy, dx))
        # Whole-pixel translation with background fill: the content keeps its values.
        kept = image[..., max(0, -dy):24 - max(0, dy), max(0, -dx):24 - max(0, dx)]
        torch.testing.assert_close(
            out[..., max(0, dy):max(0, dy) + kept.shape[-2],
                max(0, dx):max(0, dx) + kept.shape[-1]], kept)
    assert len({tuple(s) for s in shifts.tolist()}) > 1


def test_param_groups_follow_the_declaration():
    model = study.DigitsViT(*encodings.row_settings('SaPE2+APE'), quick=True)
    decay, no_decay = study.param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    declared = {f'backbone.{n}' for n in model.backbone.no_weight_decay()}
    assert declared and {names[id(p)] for p in no_decay['params']} >= declared
    assert all(p.ndim > 1 and names[id(p)] not in declared for p in decay['params'])
    assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0.


def test_seg_config_sets_the_resizes_by_type(tmp_path):
    """The study's training and test sizes reach the Resize transforms wherever
    they stand in the demo pipelines, and nothing else changes."""
    cfg = seg_config('PEG', seed=3, iters=10, work_dir=str(tmp_path / 'PEG_s3'), root=str(ROOT))
    scale = (SEG_BASE[1], SEG_BASE[0])
    train = cfg.train_dataloader.dataset.pipeline
    assert find_entry(train, 'RandomResize').scale == scale
    assert find_entry(cfg.test_dataloader.dataset.pipeline, 'Resize').scale == scale
    demo = Config.fromfile(str(ROOT / SEG_CONFIG)).train_dataloader.dataset.pipeline
    changed = [index for index, (old, new) in enumerate(zip(demo, train)) if old != new]
    assert changed == [find_entry_index(train, 'RandomResize')]
    # the row's file, configs/_base_/pos_encodings/peg.py
    assert cfg.model.backbone.pos_encoding == dict(type='mmsape.PEG')
    assert cfg.model.backbone.img_size == SEG_BASE
    assert cfg.randomness.seed == 3 and cfg.train_cfg.max_iters == 10
    # The study's set: its classes everywhere, and per-class IoU.
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == \
        len(SEG_CLASSES)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert tuple(loader.dataset.metainfo['classes']) == SEG_CLASSES
        assert loader.dataset.data_root.endswith('ade_frame_relation/ADEChallengeData2016')
    assert cfg.test_evaluator['type'] == 'mmsape.PerClassIoUMetric'
    assert [s['scale'] for s in seg_sizes()] == [1.0, 1.5, 2.0, 3.0]
    assert (seg_sizes()[-1]['height'], seg_sizes()[-1]['width']) == (480, 240)
    assert 'APE' in SEG_ENCODINGS and 'sin-cos' not in SEG_ENCODINGS


def test_goal_rows_are_found_from_their_configs(monkeypatch):
    rows = {
        'qrel': (dict(type='mmsape.SaPE2', count_from='query', bias='lookup'), {}),
        'qrel+PEG': ([dict(type='SaPE2', count_from='query'), dict(type='PEG')], {}),
        'qrel+APE': ([dict(type='LearnedAPE'), dict(type='SaPE2', count_from='query')], {}),
        'published': (dict(type='SaPE2'), {}),
    }
    use_rows(monkeypatch, rows)
    found = [n for n in rows if encodings.is_query_relative_sape2(n)]
    assert found == ['qrel', 'qrel+PEG']
    assert all(encodings.uses_sape2(n) for n in rows)
    assert not encodings.uses_sape2('PEG')


def use_rows(monkeypatch, rows: dict) -> None:
    """Add study rows whose config files hold the given ``pos_encoding``."""
    files = {}
    for name, (pos_encoding, extra) in rows.items():
        monkeypatch.setitem(encodings.ROWS, name, ((f'test:{name}', ), extra))
        files[f'test:{name}'] = pos_encoding
    read = encodings.read_pos_encoding
    monkeypatch.setattr(
        encodings, 'read_pos_encoding', lambda name: [dict(p) for p in (
            files[name] if isinstance(files[name], list) else [files[name]])]
        if name in files else read(name))


def fake_seg_run(name: str, seed: int, miou: dict, groups: dict) -> dict:
    """A segmentation result with the given mIoU per scale and group IoU (every
    class of a group at the group's value)."""
    sweep = []
    for scale, value in miou.items():
        sweep.append(dict(scale=scale, height=0, width=0, metric='mIoU', value=value))
        for group, classes in report.SEG_CLASS_GROUPS.items():
            sweep += [dict(scale=scale, height=0, width=0, metric=f'IoU.{c}',
                           value=groups[group]) for c in classes]
    layer_rows = [dict(layer=layer, shift_y=dy, shift_x=dx, cosine=1.)
                  for layer in range(2) for dy, dx in ((8, 8), (16, 0))]
    return dict(encoding=name, seed=seed, sweep=sweep, equivariance=layer_rows,
                total_cpu_s=1.)


def fake_seg_results(candidate_at: dict) -> list:
    """Baselines at 50 mIoU (seed noise 1), the query-relative row at
    ``candidate_at[scale]`` (same noise)."""
    results = []
    for seed, noise in enumerate((-1., 0., 1.)):
        for name in ('APE', 'PEG', 'RoPE mixed', 'LookHere', 'qrel'):
            miou = {s: (candidate_at[s] if name == 'qrel' else 50.) + noise
                    for s in (1.0, 1.5, 2.0, 3.0)}
            groups = dict(colour=90., frame=30. if name == 'qrel' else 60., relation=40.)
            results.append(fake_seg_run(name, seed, miou, groups))
    return results


@pytest.fixture
def goal_rows(monkeypatch):
    use_rows(monkeypatch, {'LookHere': (dict(type='LookHere'), {}),
                           'qrel': (dict(type='SaPE2', count_from='query'), {})})


def test_goal_verdict_follows_the_numbers(goal_rows):
    met = '\n'.join(report.goal_section(fake_seg_results({1.0: 50, 1.5: 50, 2.0: 53,
                                                          3.0: 55})))
    assert '**Goal met** by qrel' in met
    # Higher at 3x but within the spread (2 = the sum of the two stds) at 2x: not met.
    close = '\n'.join(report.goal_section(fake_seg_results({1.0: 50, 1.5: 50, 2.0: 51.5,
                                                            3.0: 55})))
    assert '**Goal not met**' in close
    assert 'vs APE at 2x: within seed noise (+1.5 points, spread 2.0)' in close
    assert '- vs APE at 3x' not in close  # that comparison is won
    # Lower: the class groups say where the difference comes from.
    lower = '\n'.join(report.goal_section(fake_seg_results({1.0: 50, 1.5: 50, 2.0: 40,
                                                            3.0: 40})))
    assert 'vs LookHere at 3x: lower (-10.0 points, spread 2.0)' in lower
    assert 'colour +0.0, frame -30.0, relation +0.0' in lower


def test_one_seed_decides_nothing():
    assert report._mark([52.], [50.]) == '+2.0 ?' and not report.beats([52.], [50.])
    assert report._mark([52., 54.], [50., 50.]) == '+3.0 ▲'  # spread 1.41 + 0
    assert report._mark([52., 50.], [50., 50.]) == '+1.0 ~'
    assert 'one seed' in report._compare([52.], [50.])


def test_goal_needs_every_row(goal_rows):
    results = [r for r in fake_seg_results({1.0: 50, 1.5: 50, 2.0: 60, 3.0: 60})
               if r['encoding'] != 'LookHere']
    text = '\n'.join(report.goal_section(results))
    assert '**Not measured by this run**' in text and 'no LookHere row' in text
    assert '**Goal met**' not in text
    no_candidate = [r for r in results if r['encoding'] != 'qrel']
    assert 'no query-relative SaPE² row' in '\n'.join(report.goal_section(no_candidate))


def test_report_tables_of_segmentation(goal_rows, tmp_path):
    results = fake_seg_results({1.0: 52, 1.5: 50, 2.0: 48, 3.0: 46})
    mious = report.seg_table(results, 'mIoU').split('\n')
    assert mious[0] == '| encoding | 1x | 1.5x | 2x | 3x | drop 1x → 3x |'
    assert mious[2].startswith('| APE | 50.0 ± 1.0 |') and mious[2].endswith('| 0.0 ± 0.0 |')
    assert '| qrel | 52.0 ± 1.0 | 50.0 ± 1.0 | 48.0 ± 1.0 | 46.0 ± 1.0 | 6.0 ± 0.0 |' in mious
    frame = report.seg_table(results, 'frame')
    assert '| qrel | 30.0 ± 0.0 |' in frame
    run = dict(command='x', wall_s=60., workers=2, machine='m',
               protocol=jobs.QUICK_PROTOCOL.as_dict())
    text = report.write_report(str(tmp_path), [], results, run)
    assert '**Frame-defined classes**' in text and '**Relation-defined classes**' in text
    assert (tmp_path / 'seg_resolution.png').stat().st_size > 0


def test_run_jobs_saves_resumes_and_reports_failures(tmp_path, monkeypatch):
    calls = []

    def fake_run_job(job, protocol, paths):
        calls.append(job.key)
        if job.encoding == 'PEG':
            raise RuntimeError('diverged')
        return dict(encoding=job.encoding, seed=job.seed, total_s=0.,
                    acc={'24x24': 50.}, training=job.training)

    monkeypatch.setattr(jobs, 'run_job', fake_run_job)
    planned = jobs.plan_jobs(jobs.QUICK_PROTOCOL, ['APE', 'PEG'], [])
    assert [j.key for j in planned] == [
        'digits_centred_APE_s0', 'digits_centred_PEG_s0', 'digits_shifted_APE_s0',
        'digits_shifted_PEG_s0']
    lines = []
    results, failures = jobs.run_jobs(planned, jobs.QUICK_PROTOCOL, {}, str(tmp_path),
                                      workers=1, log=lines.append)
    assert [r['encoding'] for r in results] == ['APE', 'APE']
    assert len(failures) == 2 and 'diverged' in failures[0]
    saved = json.loads((tmp_path / 'digits_centred_APE_s0.json').read_text())
    assert saved['result']['encoding'] == 'APE'
    # Resumed: only the failed jobs run again; another protocol reruns everything.
    calls.clear()
    jobs.run_jobs(planned, jobs.QUICK_PROTOCOL, {}, str(tmp_path), workers=1, resume=True,
                  log=lines.append)
    assert sorted(calls) == ['digits_centred_PEG_s0', 'digits_shifted_PEG_s0']
    calls.clear()
    longer = jobs.StudyProtocol(**dict(jobs.QUICK_PROTOCOL.as_dict(), digits_epochs=2))
    jobs.run_jobs(planned, longer, {}, str(tmp_path), workers=1, resume=True,
                  log=lines.append)
    assert len(calls) == 4
    assert jobs.plan_jobs(jobs.QUICK_PROTOCOL, ['none'], ['APE'])[0].part == 'seg'


def test_quick_study_end_to_end(tmp_path):
    """The CLI with two worker processes: jobs, JSON, run record, report and
    plots; then --part report rewrites the report from the JSON alone."""
    tool = load_script('projects/pe_study/run.py')
    out, work = tmp_path / 'out', tmp_path / 'work'
    argv = ['--quick', '--training', 'shifted', '--encodings', 'none', '--out', str(out),
            '--work-dir', str(work)]
    assert tool.main(argv) == 0
    seg = json.loads((out / 'seg_results.json').read_text())
    digits = json.loads((out / 'digits_results.json').read_text())
    assert [r['encoding'] for r in seg] == ['APE'] and len(digits) == 1
    assert digits[0]['training'] == 'shifted'
    metrics = {row['metric'] for row in seg[0]['sweep']}
    assert {'mIoU', 'aAcc'} | {f'IoU.{c}' for c in SEG_CLASSES} <= metrics
    assert sorted({row['scale'] for row in seg[0]['sweep']}) == [1.0, 1.5]
    text = (out / 'README.md').read_text()
    assert 'Shifted training' in text and '**Not measured by this run**' in text
    run = json.loads((out / 'run.json').read_text())
    assert run['workers'] == 2
    assert set(run['seg_data']['upper_half_share']['val']) >= {'spot_top', 'above_anchor'}
    assert 'Share of the validation regions' in text
    (out / 'README.md').unlink()
    assert tool.main(['--part', 'report', '--out', str(out)]) == 0
    assert (out / 'README.md').read_text() == text
    assert np.isfinite(seg[0]['total_cpu_s'])
