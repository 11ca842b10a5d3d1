"""The position-encoding study: its pieces in mmsape.analysis.pe_study and its CLI."""
import pytest
from mmengine.config import Config

from mmsape.analysis.pe_study import digits as study
from mmsape.analysis.pe_study.segmentation import SEG_BASE, SEG_CONFIG, seg_config
from mmsape.utils.config_entries import find_entry, find_entry_index

from builders import ROOT, load_tool


def test_pe_study_building_blocks(tmp_path):
    pytest.importorskip('sklearn')
    x_train, y_train, x_test, y_test = study.digits_canvases()
    assert x_train.shape[1:] == (1, study.CANVAS, study.CANVAS)
    assert len(y_train) + len(y_test) == 1797
    data = (x_train[:96], y_train[:96], x_test[:64], y_test[:64])
    results = [study.train_digits(name, 0, 1, True, data) for name in ('APE', 'none')]
    sizes = {f'{h}x{w}' for h, w in study.DIGIT_EVAL_SIZES}
    assert set(results[0]['acc']) == sizes
    tool = load_tool('pe_study')
    args = tool.parse_args(['--quick', '--out', str(tmp_path)])
    report = tool.write_report(args, results, [], wall_s=1.)
    assert (tmp_path / 'README.md').exists() and (tmp_path / 'digits_resolution.png').exists()
    assert '| APE |' in report and '| none |' in report
    # The model without position encoding is exactly equivariant under whole-patch rolls.
    none_rows = [r for r in results[1]['equivariance']
                 if r['shift_x'] % study.PATCH == 0 and r.get('mode') != 'crop']
    assert all(abs(r['cosine'] - 1) < 1e-5 for r in none_rows)


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
    assert cfg.model.backbone.pos_encoding == dict(type='PEG')
    assert cfg.model.backbone.img_size == SEG_BASE
    assert cfg.randomness.seed == 3 and cfg.train_cfg.max_iters == 10
