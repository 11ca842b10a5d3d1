"""The demo's pictures: loss curves from MMEngine's scalar logs, and grids of drawings."""
import json
from pathlib import Path

import mmcv
import numpy as np
import pytest

from mmsape.analysis.training_figures import (
    plot_train_losses,
    read_train_losses,
    stack_drawings,
)

from builders import open_picture


def write_scalars(work_dir: Path, timestamp: str, records: list) -> None:
    log = work_dir / timestamp / 'vis_data' / 'scalars.json'
    log.parent.mkdir(parents=True)
    log.write_text(''.join(json.dumps(record) + '\n' for record in records))


def test_losses_of_runs_in_time_order(tmp_path):
    # a run, a resumed run that repeats iteration 20, and a test run (no loss)
    write_scalars(tmp_path, '20260101_000000', [
        {'lr': 0.1, 'loss': 3.0, 'loss_cls': 2.0, 'iter': 10},
        {'lr': 0.1, 'loss': 2.5, 'loss_cls': 1.8, 'iter': 20}])
    write_scalars(tmp_path, '20260101_010000', [
        {'lr': 0.1, 'loss': 2.4, 'loss_cls': 1.7, 'iter': 20},
        {'lr': 0.1, 'loss': 2.0, 'loss_cls': 1.5, 'iter': 30},
        {'mIoU': 50.0, 'step': 30}])
    write_scalars(tmp_path, '20260101_020000', [{'mIoU': 51.0, 'step': 30}])
    losses = read_train_losses(tmp_path)
    assert losses == {'loss': [(10, 3.0), (20, 2.4), (30, 2.0)],
                      'loss_cls': [(10, 2.0), (20, 1.7), (30, 1.5)]}
    assert read_train_losses(tmp_path, last_run=True)['loss'] == [(20, 2.4), (30, 2.0)]
    with pytest.raises(FileNotFoundError, match='no training losses'):
        read_train_losses(tmp_path / '20260101_020000')


def test_loss_curve_falls_where_the_loss_falls(tmp_path):
    iterations = np.arange(10, 310, 10)
    losses = {'loss': [(int(i), float(3 * np.exp(-i / 100))) for i in iterations],
              'loss_aux': [(int(i), 0.5) for i in iterations]}
    image = open_picture(plot_train_losses(losses, tmp_path / 'curve.png'), size=(600, 350))
    # the total loss takes matplotlib's first colour, C0 = (31, 119, 180)
    rows, columns = np.nonzero(np.abs(image.astype(int) - (31, 119, 180)).sum(-1) < 30)
    assert len(columns) > 200, 'the loss curve is missing'
    left, right = columns < np.percentile(columns, 20), columns > np.percentile(columns, 80)
    assert rows[left].mean() < rows[right].mean() - 100  # image rows grow downwards


def test_stacked_drawings_keep_each_row(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # RGB
    sizes = [(100, 50), (60, 60), (200, 40)]  # width, height
    drawings = []
    for index, (colour, (width, height)) in enumerate(zip(colours, sizes)):
        image = np.zeros((height, width, 3), np.uint8)
        image[:, : width // 2] = colour  # left half coloured, right half black
        drawings.append(tmp_path / f'{index}.jpg' if index == 2 else tmp_path / f'{index}.png')
        mmcv.imwrite(image[..., ::-1], str(drawings[-1]))
    grid = stack_drawings(drawings, tmp_path / 'grid.png', width=240,
                          column_titles=('ground truth', 'prediction'), gap=4)
    heights = [round(h * 240 / w) for w, h in sizes]  # 120, 240, 48
    image = open_picture(grid, size=(240, 24 + sum(heights) + 2 * 4))
    title = image[:24]
    assert (title < 128).any(axis=-1)[:, :120].any() and (title < 128).any(axis=-1)[:, 120:].any()
    top = 24
    for colour, height in zip(colours, heights):
        row = image[top:top + height].astype(int)
        middle = slice(height // 4, 3 * height // 4)
        assert np.abs(row[middle, 10:110] - colour).max() <= 8  # JPEG for the last one
        assert row[middle, 130:230].max() <= 8
        top += height
        if top < image.shape[0]:
            assert (image[top:top + 4] == 255).all()  # the gap
            top += 4
    with pytest.raises(ValueError, match='at least one'):
        stack_drawings([], tmp_path / 'empty.png')
