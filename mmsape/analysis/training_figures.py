"""Pictures of a training run: its loss curves, from the scalars MMEngine logs,
and a grid of the drawings its test wrote (``tools/test.py --show-dir``)."""
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import mmcv
import numpy as np

PathLike = Union[str, Path]


def read_train_losses(work_dir: PathLike,
                      last_run: bool = False) -> Dict[str, List[Tuple[int, float]]]:
    """The losses of the training runs logged in ``work_dir``.

    Reads MMEngine's ``<timestamp>/vis_data/scalars.json`` files in time order;
    a later run (a resumed one) overrides the iterations it repeats. Records
    without a ``loss`` (evaluations, test runs) are skipped.

    Args:
        work_dir (str | Path): The ``--work-dir`` of the runs.
        last_run (bool): Read only the newest run that logged losses.

    Returns:
        dict: ``{name: [(iteration, value), ...]}`` for ``loss`` and every
        logged loss term (``loss_cls``, ``decode.loss_ce``, ...), by iteration.
    """
    runs = []
    for log in sorted(Path(work_dir).glob('*/vis_data/scalars.json')):
        records = [json.loads(line) for line in log.read_text().splitlines()]
        records = [record for record in records if 'loss' in record]
        if records:
            runs.append(records)
    if not runs:
        raise FileNotFoundError(f'no training losses logged in {work_dir} '
                                '(<timestamp>/vis_data/scalars.json)')
    series: Dict[str, Dict[int, float]] = defaultdict(dict)
    for records in runs[-1:] if last_run else runs:
        for record in records:
            for name, value in record.items():
                if 'loss' in name:
                    series[name][record['iter']] = value
    return {name: sorted(values.items()) for name, values in series.items()}


def plot_train_losses(losses: Dict[str, List[Tuple[int, float]]], out_file: PathLike,
                      title: str = '') -> Path:
    """Plot :func:`read_train_losses`: the total loss bold, its terms thin."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    # The total first, so that it takes the first colour of the cycle.
    for name in sorted(losses, key=lambda name: (name != 'loss', name)):
        iterations, values = zip(*losses[name])
        ax.plot(iterations, values, label=name, linewidth=2.0 if name == 'loss' else 0.8)
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file)
    plt.close(fig)
    return out_file


def stack_drawings(drawings: Sequence[PathLike], out_file: PathLike, width: int = 480,
                   column_titles: Optional[Sequence[str]] = None, gap: int = 4) -> Path:
    """Stack drawings (e.g. ground truth | prediction pairs, as mmdet's and
    mmseg's visualizers draw them) into one picture, each scaled to ``width``.

    Args:
        drawings: Image files, one row each.
        out_file (str | Path): The grid (PNG for lossless output).
        width (int): Width of the grid and of every row.
        column_titles (Sequence[str], optional): Titles over equal-width
            columns, e.g. ``('ground truth', 'prediction')``.
        gap (int): White pixels between rows.
    """
    if not drawings:
        raise ValueError('stack_drawings needs at least one drawing')
    rows = []
    for drawing in drawings:
        image = mmcv.imread(str(drawing))
        if image is None:
            raise FileNotFoundError(f'cannot read the drawing {drawing}')
        height = round(image.shape[0] * width / image.shape[1])
        # Nearest when enlarging: the drawings are small and their edges sharp.
        interpolation = 'nearest' if width > image.shape[1] else 'area'
        rows.append(mmcv.imresize(image, (width, height), interpolation=interpolation))
        rows.append(np.full((gap, width, 3), 255, np.uint8))
    if column_titles:
        rows.insert(0, _title_bar(column_titles, width))
    out_file = Path(out_file)
    mmcv.imwrite(np.concatenate(rows[:-1]), str(out_file),
                 params=[cv2.IMWRITE_PNG_COMPRESSION, 9])  # a third of OpenCV's default size
    return out_file


def _title_bar(titles: Sequence[str], width: int, height: int = 24) -> np.ndarray:
    bar = np.full((height, width, 3), 255, np.uint8)
    column = width / len(titles)
    for index, title in enumerate(titles):
        (text_width, text_height), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        origin = (int(column * (index + 0.5) - text_width / 2), (height + text_height) // 2)
        cv2.putText(bar, title, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return bar
