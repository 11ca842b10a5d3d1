"""The position-encoding study (projects/pe_study): its set, its pairing, its
measurements, its statistics, its report and its CLI."""
import json
import math

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from PIL import Image

from mmsape.registry import HOOKS
from projects.pe_study.study import dataset, encodings, report, segmentation, stats
from projects.pe_study.study.jobs import QUICK_PROTOCOL

from builders import ROOT, load_script


# ------------------------------------------------------------------ the set
def test_label_rules_by_hand():
    assert dataset.frame_label(10., 96.) == 'spot_top'
    assert dataset.frame_label(60., 96.) == 'spot_bottom'
    assert dataset.relation_label(20., 40.) == 'above_anchor'
    assert dataset.relation_label(40., 20.) == 'below_anchor'
    with pytest.raises(ValueError, match='above or below'):
        dataset.relation_label(5., 5.)
    a, b, c = ((1, 2, 3), 'disc', 19.), ((1, 2, 3), 'square', 19.), ((9, 9, 9), 'disc', 19.)
    assert dataset.similarity_labels([a, b, a, c]) == ['twin', 'single', 'twin', 'single']


@pytest.mark.parametrize('canvas', [(96, 96), (192, 192), (288, 288), (96, 192)])
def test_generated_images_follow_the_rules(canvas):
    height, width = canvas
    units = height * width / (96 * 96)
    for index in range(6):
        shapes = dataset.sample_shapes(np.random.default_rng([7, index]), height, width)
        labels = [s.label for s in shapes]
        pastel = [s for s in shapes if s.label in ('twin', 'single')]
        for shape in shapes:
            x0, y0, x1, y1 = shape.bbox_xyxy
            assert 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height
            if shape.label.startswith('spot_'):
                # a few pixels from its edge, named by its half
                gap = min(y0, height - y1)
                assert dataset.FRAME_GAP[0] - 0.01 <= gap <= dataset.FRAME_GAP[1] + 0.01
                assert shape.label == dataset.frame_label(shape.center[1], height)
        for shape in pastel:
            same = [o for o in pastel if o.color == shape.color and o.kind == shape.kind]
            if shape.label == 'twin':
                assert len(same) >= 2
                far = max(math.dist(shape.center, o.center) for o in same)
                assert far >= dataset.MIN_TWIN_DISTANCE
            else:  # a single's hue belongs to no other object of its image
                assert len(same) == 1
                assert sum(o.color == shape.color for o in pastel) == 1
        blobs = [s for s in shapes if s.label in ('above_anchor', 'below_anchor')]
        anchors = [s for s in shapes if s.label == 'cyan_anchor']
        assert len(blobs) == len(anchors)
        for blob in blobs:  # its anchor: the nearest one of the same shape, straight below / above
            anchor = min((a for a in anchors if a.kind == blob.kind),
                         key=lambda a: math.dist(a.center, blob.center))
            assert blob.label == dataset.relation_label(blob.center[1], anchor.center[1])
        # density: the unit content scaled by the area (random rounding: within one)
        assert abs(labels.count('cyan_anchor') - 2 * units) <= 1.5 + 0.1 * units


def test_generate_writes_the_ade_layout_and_is_reused(tmp_path):
    sets = [dataset.EvalSet('val_pad_1x', (96, 96), 2),
            dataset.EvalSet('val_pad_2x', (192, 192), 1)]
    manifest = dataset.generate(str(tmp_path), 3, sets)
    labels = np.asarray(Image.open(tmp_path / 'annotations/val_pad_2x/val_pad_2x_00000.png'))
    image = np.asarray(Image.open(tmp_path / 'images/val_pad_2x/val_pad_2x_00000.png'))
    assert labels.shape == (192, 192) and image.shape == (192, 192, 3)
    assert labels.max() <= len(dataset.CLASSES)
    objects = json.loads((tmp_path / 'objects/val_pad_2x.json').read_text())
    assert {o['label'] for o in objects['val_pad_2x_00000']} <= set(dataset.CLASSES)
    stamp = (tmp_path / 'images/training/training_00000.png').stat().st_mtime_ns
    assert dataset.generate(str(tmp_path), 3, sets) == manifest
    assert (tmp_path / 'images/training/training_00000.png').stat().st_mtime_ns == stamp


# --------------------------------------------------------------- statistics
def test_paired_difference_by_hand():
    assert stats.t_quantile(4) == pytest.approx(2.7764, abs=1e-4)
    diff = stats.paired_difference({0: 52., 1: 50., 2: 55.}, {0: 50., 1: 49., 2: 51., 3: 9.})
    # differences 2, 1, 4: mean 7/3, sd sqrt(7/3), n 3
    assert diff.n == 3 and diff.mean == pytest.approx(7 / 3)
    assert diff.sd == pytest.approx(math.sqrt(7 / 3))
    assert diff.half_width == pytest.approx(4.3027 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-4)
    assert diff.sign == '~'  # 2.33 < 3.79
    decided = stats.paired_difference({s: 60. + s % 2 for s in range(5)},
                                      {s: 50. for s in range(5)})
    assert decided.sign == '▲' and decided.format().endswith('▲')
    assert stats.paired_difference({0: 1.}, {0: 0.}).format() == '+1.0 (1 seed)'
    assert stats.paired_difference({0: 1.}, {1: 0.}) is None
    # t(n-1) * 3 / sqrt(n) <= 2 first at n = 12 (t(11) = 2.201: 1.906)
    assert stats.seeds_needed(3., 2.) == 12


# ----------------------------------------------------------- measurements
def tiny_segmenter(pos_encoding) -> torch.nn.Module:
    cfg = Config.fromfile(str(ROOT / segmentation.SEG_CONFIG))
    cfg.model.backbone.pos_encoding = pos_encoding
    cfg.model.backbone.arch = dict(embed_dims=32, num_layers=2, num_heads=2,
                                   feedforward_channels=32)
    cfg.model.backbone.out_indices = (1, )
    cfg.model.decode_head.in_channels = cfg.model.decode_head.channels = 32
    torch.manual_seed(0)
    return segmentation.build_model(cfg).eval()


@pytest.mark.parametrize('pos_encoding', [
    dict(type='mmsape.NoPositionEncoding'),
    dict(type='mmsape.SaPE2', count_from='query', bias='lookup'),
    dict(type='mmsape.SaPE2'),
    dict(type='mmsape.RoPE2D', mode='mixed'),
])
def test_probed_attention_is_the_attention_mass(pos_encoding):
    """The probe columns equal softmax(q.k / sqrt(d) + bias) @ probes, computed
    here from the block's q, k and the encoding's reference bias."""
    backbone = tiny_segmenter(pos_encoding).backbone
    images = torch.randn(1, 3, 24, 32)
    grid_tokens = 1 + 3 * 4
    probes = (torch.rand(1, grid_tokens, 3) > 0.5).float()
    probes[:, 0] = 0
    captured = []
    handle = backbone.blocks[0].attn.qkv.register_forward_hook(
        lambda module, args, out: captured.append(out))
    record = []
    with torch.no_grad(), segmentation.probed_attention(backbone, probes, record):
        backbone(images)
    handle.remove()
    assert len(record) == 2 and record[0].shape == (1, 2, grid_tokens, 3)
    assert 'attention' not in vars(backbone.pos_encoding)  # the method is back
    q, k, _ = captured[0].reshape(1, grid_tokens, 3, 2, 16).permute(2, 0, 3, 1, 4).double()
    encoding = backbone.pos_encoding
    from mmsape.models.pos_encodings import TokenGrid
    grid = TokenGrid(3, 4, 1)
    if pos_encoding['type'] == 'mmsape.RoPE2D':
        q, k = (encoding.rotate(0, t.float(), grid).double() for t in (q, k))
        bias = 0.
    elif 'SaPE2' in pos_encoding['type']:
        bias = encoding.attention_bias(0, q.float(), k.float(), grid).double()
    else:
        bias = 0.
    weights = torch.softmax(q @ k.transpose(-1, -2) / 4. + bias, dim=-1)
    expected = weights @ probes.double()[:, None]
    torch.testing.assert_close(record[0].double(), expected, atol=2e-5, rtol=1e-4)


def test_twin_pairs_pick_the_control_at_the_twin_distance():
    def obj(label, color, kind, x, y):
        return dict(label=label, color=color, kind=kind,
                    polygon=[[x - 5, y - 5], [x + 5, y - 5], [x + 5, y + 5], [x - 5, y + 5]])
    objects = [obj('twin', [1, 1, 1], 'disc', 10, 10), obj('twin', [1, 1, 1], 'disc', 60, 10),
               obj('single', [2, 2, 2], 'disc', 12, 30), obj('single', [3, 3, 3], 'disc', 10, 61),
               obj('spot_top', [9, 9, 9], 'disc', 80, 80)]
    triples = segmentation.twin_pairs(objects)
    # object 0: twin 1 at 50 pixels; singles at 20 and 51 -> control 3
    assert triples[0] == (0, 1, 3)
    assert [t[:2] for t in triples] == [(0, 1), (1, 0)]
    masks = segmentation.patch_masks(objects, (12, 12), 8)
    assert masks[0, 1, 1] and not masks[0, 1, 7] and masks[1, 1, 7]


def test_translation_agreement_of_a_model_without_position_is_total(tmp_path):
    dataset.generate(str(tmp_path), 1, [dataset.EvalSet('val_pad_1x', (96, 96), 3)])
    model = tiny_segmenter(dict(type='mmsape.NoPositionEncoding'))
    cfg = segmentation.seg_config('none', 0, 10, str(tmp_path / 'w'), str(tmp_path), None)
    agreement = segmentation.translation_agreement(model, cfg, 'val_pad_1x', 3)
    assert agreement['8,8'] == pytest.approx(100.)  # a whole-patch roll permutes the tokens
    assert agreement['0,4'] < 100.


# ------------------------------------------------------------------ pairing
@HOOKS.register_module()
class _StudyBatchRecorder(Hook):
    """Records what each training iteration sees (test only)."""
    seen: list = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model
        shared = torch.cat([p.detach().flatten() for n, p in model.named_parameters()
                            if 'pos_encoding' not in n]) if batch_idx == 0 else None
        flips = [s.flip for s in data_batch['data_samples']]
        paths = [s.img_path for s in data_batch['data_samples']]
        type(self).seen.append((runner.cfg.experiment_name, batch_idx, paths, flips, shared))


def test_rows_of_a_seed_share_weights_and_batches(tmp_path):
    """Two rows trained with one seed start from the same shared weights and
    see the same images with the same flips; another seed does not."""
    from mmsape.apis import build_train_runner
    dataset.generate(str(tmp_path / 'data'), 12, [dataset.EvalSet('val_pad_1x', (96, 96), 1)])
    init = {s: segmentation.shared_init_checkpoint(s, str(tmp_path / f'init{s}.pth'))
            for s in (0, 1)}
    _StudyBatchRecorder.seen = []
    for row, seed in (('APE', 0), ('RoPE mixed', 0), ('APE', 1)):
        cfg = segmentation.seg_config(row, seed, 3, str(tmp_path / f'{row}{seed}'),
                                      str(tmp_path / 'data'), init[seed])
        cfg.custom_hooks.append(dict(type='mmsape._StudyBatchRecorder'))
        cfg.experiment_name = f'{row}{seed}'
        build_train_runner(cfg).train()
    by_run = {}
    for name, _, paths, flips, shared in _StudyBatchRecorder.seen:
        by_run.setdefault(name, []).append((paths, flips, shared))
    ape0, rope0, ape1 = by_run['APE0'], by_run['RoPE mixed0'], by_run['APE1']
    assert [b[:2] for b in ape0] == [b[:2] for b in rope0]
    torch.testing.assert_close(ape0[0][2], rope0[0][2], rtol=0, atol=0)
    assert [b[0] for b in ape0] != [b[0] for b in ape1]
    assert not torch.equal(ape0[0][2], ape1[0][2])


# ------------------------------------------------------------------- report
def fake_result(row: str, seed: int, miou: float, similarity: float = 90.) -> dict:
    evaluations = []
    for _, mode, scale, aspect in report.COLUMNS:
        metrics = {'mIoU': miou + (seed % 3 - 1) * 0.5}
        for group, classes in dataset.CLASS_GROUPS.items():
            for name in classes:
                metrics[f'IoU.{name}'] = similarity if group == 'similarity' else 95.
        evaluations.append(dict(mode=mode, scale=scale, aspect=aspect, metrics=metrics))
    attention = {s: [dict(layer=0, twin=0.1, control=0.05)] for s in ('1.0', '2.0')}
    return dict(row=row, seed=seed, evaluations=evaluations,
                translation={'8,8': 99., '0,4': 90.}, twin_attention=attention,
                total_cpu_s=1.)


def fake_results(sape_at: float) -> list:
    results = []
    for seed in range(5):
        for row in encodings.GOAL_BASELINES + ('none', ):
            results.append(fake_result(row, seed, 50.))
        results.append(fake_result('SaPE2 published', seed, sape_at))
    return results


def test_goal_and_claims_follow_the_numbers(tmp_path):
    met, winner = report.goal_section(fake_results(53.))
    assert winner == 'SaPE2 published' and '**Goal met** by SaPE2 published' in '\n'.join(met)
    # identical seed noise in every row: the paired differences have sd 0 and decide
    _, none_win = report.goal_section(fake_results(50.))
    assert none_win is None
    text = report.write_report(str(tmp_path), fake_results(53.), dict(
        protocol=QUICK_PROTOCOL.as_dict(), parts={}, machine='test'))
    assert '**Goal met**' in text and (tmp_path / 'seg_resolution.png').exists()
    assert '**Power target reached**' in text
    # equal translation and attention in every row: those claims are "not shown"
    assert '| SaPE2 published | Resolution generalization' in text
    assert 'supported' in text and 'not shown' in text
    # results made outside the run's jobs say where they come from, once per note
    results = fake_results(53.)
    for result in results[:3]:
        result['provenance'] = 'from an earlier run'
    text = report.write_report(str(tmp_path), results, dict(
        protocol=QUICK_PROTOCOL.as_dict(), parts={}, machine='test'))
    assert text.count('- 3 of the trainings: from an earlier run') == 1
    # 40 trainings of 1 CPU s on 2 workers: their start (20 s) and 20 s of work
    assert 'the decision rows from scratch: about 1 min on 2 workers' in text
    from projects.pe_study.study.jobs import schedule_wall_s
    assert schedule_wall_s([5., 4., 3., 3.], 2) == 20. + 8.


def test_power_target_and_learnability_failures_are_reported():
    results = fake_results(50.)
    for result in results:  # PEG's seeds scatter: wide intervals
        if result['row'] == 'PEG':
            for evaluation in result['evaluations']:
                evaluation['metrics']['mIoU'] += 10. * (result['seed'] - 2)
            result['evaluations'][0]['metrics']['IoU.twin'] = 30.
    text = '\n'.join(report.power_section(results, encodings.DECISION_ROWS))
    assert '**Power target not reached**' in text and '✗' in text
    learn, ok = report.learnability_section(results)
    assert not ok and '30.0 ✗' in '\n'.join(learn)


# ---------------------------------------------------------------------- CLI
def test_quick_study_end_to_end(tmp_path):
    """The CLI with two worker processes: jobs, JSON, run record, report and
    figure; --part report rewrites the report from the JSON alone; --resume
    reruns nothing."""
    tool = load_script('projects/pe_study/run.py')
    out, work = tmp_path / 'out', tmp_path / 'work'
    argv = ['--quick', '--out', str(out), '--work-dir', str(work)]
    assert tool.main(argv) == 0
    results = json.loads((out / 'seg_results.json').read_text())
    assert sorted(r['row'] for r in results) == ['PEG', 'none']
    evaluations = {(e['mode'], e['scale']) for e in results[0]['evaluations']}
    assert ('pad', 1.0) in evaluations and ('resize', 1.5) in evaluations
    assert set(results[0]['translation']) == {'8,8', '0,4'}
    assert results[0]['twin_attention']['1.0'][0].keys() == {'layer', 'twin', 'control'}
    text = (out / 'README.md').read_text()
    assert '## Goal' in text and '## Power' in text and (out / 'seg_resolution.png').exists()
    run = json.loads((out / 'run.json').read_text())
    assert run['parts']['seg']['workers'] == 2 and run['data']['objects']['training']
    (out / 'README.md').unlink()
    assert tool.main(['--part', 'report', '--out', str(out)]) == 0
    assert (out / 'README.md').read_text() == text
    assert tool.main(argv + ['--resume']) == 0
    again = json.loads((out / 'seg_results.json').read_text())
    assert [r['total_s'] for r in again] == [r['total_s'] for r in results]
    assert json.loads((out / 'run.json').read_text())['parts']['seg']['reused'] == 2
    assert '2 of them reused from an earlier run' in (out / 'README.md').read_text()


def test_rows_come_from_config_files():
    for row in encodings.ROWS:
        for name in encodings.ROWS[row][0]:
            assert encodings.config_path(name).endswith(f'{name}.py')
    assert encodings.row_settings('SaPE2 qrel lookup+PEG')[0] == [
        dict(type='mmsape.SaPE2', count_from='query', bias='lookup'), dict(type='mmsape.PEG')]
    assert encodings.is_query_relative_sape2('SaPE2 qrel distance+PEG')
    assert not encodings.is_query_relative_sape2('SaPE2 published')
    with pytest.raises(ValueError, match='Unknown study rows'):
        encodings.check_rows(['PEG', 'nope'])
    assert set(encodings.GOAL_BASELINES) <= set(encodings.DECISION_ROWS)
