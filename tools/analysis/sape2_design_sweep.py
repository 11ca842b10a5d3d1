"""The design sweep of query-relative SaPE² (issue 12) on the study's digits task.

Trains the study's small ViT (:mod:`mmsape.analysis.pe_study.digits`: PosEncViT,
64 dims, 4 blocks, patch 4) with candidate SaPE² settings and reference encodings
under two protocols, and prints one markdown table:

* **centred**: the study's protocol, digits centred on a 24x24 canvas, 6
  epochs; measured at 24x24, on the digits moved by one patch (4, 4), and with
  the canvas padded to 48x48 (same pixels, larger grid);
* **translated**: every training digit at a random place of a 32x32 canvas
  (drawn anew each epoch), 10 epochs; measured on test digits at random places
  of a 32x32 canvas (fixed draw), and with that canvas padded to 64x64.

One CPU thread per run; the numbers are means over ``--seeds`` with the spread
(min..max)::

    OMP_NUM_THREADS=1 python tools/analysis/sape2_design_sweep.py --seeds 0 1 --json a.json
    python tools/analysis/sape2_design_sweep.py --table-from a.json b.json
"""
import argparse
import json
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmsape.analysis.pe_study.digits import (
    CANVAS,
    DIGIT_SIZE,
    PATCH,
    DigitsViT,
    accuracy,
    digits_canvases,
    fit_digits,
    pad_canvas,
    translate,
)

QUERY = dict(type='SaPE2', count_from='query')
#: The lookup form with the authors' table init (std 0.02), the base of most rows.
LOOKUP = dict(QUERY, bias='lookup', table_std=0.02)
#: name -> pos_encoding config. The first rows are references.
CANDIDATES: Dict[str, object] = {
    'none': dict(type='NoPositionEncoding'),
    'PEG': dict(type='PEG'),
    'SaPE2 published': dict(type='SaPE2'),
    'query distance': dict(QUERY, bias='distance'),
    'query lookup, std 0.02': LOOKUP,
    'query lookup, std 0.2': dict(LOOKUP, table_std=0.2),
    'query lookup, std 0.02, head scalars': dict(LOOKUP, table_values='head_scalars'),
    'query lookup, std 0.02, gate T=4': dict(LOOKUP, gate_temperature=4.),
    'query lookup, std 0.02 + PEG': [LOOKUP, dict(type='PEG')],
    'query lookup, std 0.2 + PEG': [dict(LOOKUP, table_std=0.2), dict(type='PEG')],
}
PROTOCOLS = {'centred': dict(canvas=CANVAS, epochs=6),
             'translated': dict(canvas=32, epochs=10)}


def digit_crops(canvases: Tensor) -> Tensor:
    """The ``DIGIT_SIZE`` square digits out of the study's centred canvases."""
    margin = (CANVAS - DIGIT_SIZE) // 2
    return canvases[..., margin:margin + DIGIT_SIZE, margin:margin + DIGIT_SIZE]


def place_at_random(digits: Tensor, canvas: int, generator: torch.Generator) -> Tensor:
    """Each digit at a uniformly random place of a background (-1) canvas."""
    out = torch.full((len(digits), 1, canvas, canvas), -1.)
    offsets = torch.randint(0, canvas - DIGIT_SIZE + 1, (len(digits), 2), generator=generator)
    for image, digit, (dy, dx) in zip(out, digits, offsets.tolist()):
        image[:, dy:dy + DIGIT_SIZE, dx:dx + DIGIT_SIZE] = digit
    return out


def train(pos_encoding, protocol: str, seed: int, data) -> Tuple[nn.Module, float]:
    """The study's recipe (:func:`~mmsape.analysis.pe_study.digits.fit_digits`);
    the translated protocol redraws the digits' places every epoch."""
    x_train, y_train = data[:2]
    canvas, epochs = PROTOCOLS[protocol]['canvas'], PROTOCOLS[protocol]['epochs']
    torch.manual_seed(seed)
    model = DigitsViT(pos_encoding, {})
    augment = None
    if protocol == 'translated':
        def augment(images, generator):
            return place_at_random(digit_crops(images), canvas, generator)
    train_s, _ = fit_digits(model, x_train, y_train, epochs, seed, augment)
    return model.eval(), train_s


def evaluate(model: nn.Module, protocol: str, data) -> Dict[str, float]:
    x_test, y_test = data[2:]
    if protocol == 'centred':
        return {'acc': accuracy(model, x_test, y_test),
                'shift 1 patch': accuracy(model, translate(x_test, PATCH, PATCH), y_test),
                'pad 48': accuracy(model, pad_canvas(x_test, (48, 48)), y_test)}
    placed = place_at_random(digit_crops(x_test), 32, torch.Generator().manual_seed(1234))
    return {'acc': accuracy(model, placed, y_test),
            'pad 64': accuracy(model, pad_canvas(placed, (64, 64)), y_test)}


def summary(values: Sequence[float]) -> str:
    mean = sum(values) / len(values)
    return f'{mean:.1f} ({min(values):.1f}..{max(values):.1f})'


def table(results: List[dict]) -> str:
    columns = [('centred', 'acc'), ('centred', 'shift 1 patch'), ('centred', 'pad 48'),
               ('translated', 'acc'), ('translated', 'pad 64')]
    lines = ['| encoding | ' + ' | '.join(f'{p} {m}' for p, m in columns) + ' | s/run |',
             '|---|' + '---:|' * (len(columns) + 1)]
    for name in dict.fromkeys(r['name'] for r in results):
        cells = []
        for protocol, metric in columns:
            values = [r['metrics'][metric] for r in results
                      if r['name'] == name and r['protocol'] == protocol]
            cells.append(summary(values) if values else 'n/a')
        seconds = [r['train_s'] for r in results if r['name'] == name]
        lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {sum(seconds) / len(seconds):.0f} |')
    return '\n'.join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--candidates', nargs='+', choices=list(CANDIDATES),
                        default=list(CANDIDATES))
    parser.add_argument('--protocols', nargs='+', choices=list(PROTOCOLS),
                        default=list(PROTOCOLS))
    parser.add_argument('--json', help='also write the per-run results here')
    parser.add_argument('--table-from', nargs='+', metavar='JSON',
                        help='only print the table of these --json files, combined')
    args = parser.parse_args(argv)
    if args.table_from:
        results = []
        for path in args.table_from:
            with open(path) as file:
                results += json.load(file)
        order = {name: i for i, name in enumerate(CANDIDATES)}
        print(table(sorted(results, key=lambda r: order.get(r['name'], len(order)))))
        return
    torch.set_num_threads(1)
    data = digits_canvases()
    results = []
    for protocol in args.protocols:
        for seed in args.seeds:
            for name in args.candidates:
                model, train_s = train(CANDIDATES[name], protocol, seed, data)
                metrics = evaluate(model, protocol, data)
                results.append(dict(name=name, protocol=protocol, seed=seed, train_s=train_s,
                                    metrics=metrics))
                print(f'[{protocol}] {name} seed {seed}: '
                      + ', '.join(f'{k} {v:.1f}' for k, v in metrics.items())
                      + f' ({train_s:.0f}s)', flush=True)
                if args.json:
                    with open(args.json, 'w') as file:
                        json.dump(results, file, indent=1)
    print(table(results))


if __name__ == '__main__':
    main()
