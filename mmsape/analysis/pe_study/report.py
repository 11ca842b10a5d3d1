"""The study's report: markdown tables, plots and data-driven findings from the
JSON results of the digits and segmentation parts (see
:mod:`mmsape.analysis.pe_study`)."""
import os.path as osp
import platform
from typing import List, Sequence, Tuple

import numpy as np
import torch

from mmsape.analysis.encodings import COMPARED_ENCODINGS as ENCODINGS
from mmsape.analysis.pe_study.digits import CANVAS, DIGIT_EVAL_SIZES, DIGIT_SIZE, PATCH, PROTOCOLS
from mmsape.analysis.pe_study.segmentation import SEG_BASE, SEG_CONFIG
from mmsape.analysis.resolution import plot_metric_vs_size


def mean_std(values: Sequence[float], digits: int = 1) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return '-'
    std = values.std(ddof=1) if len(values) > 1 else 0.
    return f'{values.mean():.{digits}f} ± {std:.{digits}f}'


def digits_tables(results: List[dict],
                  protocol: str = 'resize') -> Tuple[str, str, List[dict]]:
    key = PROTOCOLS[protocol]
    names = [n for n in ENCODINGS if any(r['encoding'] == n for r in results)]
    sizes = [f'{h}x{w}' for h, w in DIGIT_EVAL_SIZES]
    head = ('| encoding | params | ' + ' | '.join(sizes) +
            ' | shift (4,4) | shift (-4,4) | shift (0,2) |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    plot_rows = []
    for name in names:
        runs = [r for r in results if r['encoding'] == name]
        cells = [mean_std([r[key][s] for r in runs]) for s in sizes]
        cells += [mean_std([r['shifted_acc'][k] for r in runs])
                  for k in ('4,4', '-4,4', '0,2')]
        lines.append(f'| {name} | {runs[0]["params"]:,} | ' + ' | '.join(cells) + ' |')
        for s in sizes:
            h, w = (int(v) for v in s.split('x'))
            plot_rows.append(dict(checkpoint=name, height=h, width=w,
                                  metric=f'top-1 (%), {protocol}',
                                  value=float(np.mean([r[key][s] for r in runs]))))
    equi_head = ('| encoding | last block, roll (4,4) | last block, roll (8,0) | '
                 'last block, roll (0,2) | last block, crop (4,4) | logits top-1 agree (4,4) '
                 '| logits top-1 agree (0,2) |')
    equi = [equi_head, '|' + '---|' * (equi_head.count('|') - 1)]
    for name in names:
        runs = [r for r in results if r['encoding'] == name]
        last = max(row['layer'] for row in runs[0]['equivariance'])

        def pick(run, dy, dx, mode, _last=last):
            return next(row['cosine'] for row in run['equivariance']
                        if row['layer'] == _last and row['shift_y'] == dy
                        and row['shift_x'] == dx and row.get('mode', 'circular') == mode)

        def agree(run, dy, dx):
            return next(100 * row['top1_agreement'] for row in run['logits']
                        if row['shift_y'] == dy and row['shift_x'] == dx)
        cells = [mean_std([pick(r, PATCH, PATCH, 'circular') for r in runs], 4),
                 mean_std([pick(r, 2 * PATCH, 0, 'circular') for r in runs], 4),
                 mean_std([pick(r, 0, PATCH // 2, 'circular') for r in runs], 4),
                 mean_std([pick(r, PATCH, PATCH, 'crop') for r in runs], 4),
                 mean_std([agree(r, PATCH, PATCH) for r in runs]),
                 mean_std([agree(r, 0, PATCH // 2) for r in runs])]
        equi.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines), '\n'.join(equi), plot_rows


def plot_equivariance(results: List[dict], path: str, shift: Tuple[int, int],
                      title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = [n for n in ENCODINGS if any(r['encoding'] == n for r in results)]
    cmap = plt.get_cmap('tab20' if len(names) > 10 else 'tab10')
    for index, name in enumerate(names):
        runs = [r for r in results if r['encoding'] == name]
        layers = sorted({row['layer'] for row in runs[0]['equivariance'] if row['layer'] >= 0})
        values = [np.mean([row['cosine'] for r in runs for row in r['equivariance']
                           if row['layer'] == layer and (row['shift_y'], row['shift_x']) == shift
                           and row.get('mode', 'circular') == 'circular'])
                  for layer in layers]
        ax.plot(layers, values, 'o-', label=name, color=cmap(index % cmap.N))
    ax.set_xlabel('block')
    ax.set_ylabel('feature cosine (1 = equivariant)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def seg_tables(results: List[dict]) -> Tuple[str, str, List[dict]]:
    names = [n for n in ENCODINGS if any(r['encoding'] == n for r in results)]
    sizes = []
    for r in results:
        for row in r['sweep']:
            key = (row['height'], row['width'])
            if key not in sizes:
                sizes.append(key)
    head = '| encoding | ' + ' | '.join(f'{h}x{w}' for h, w in sizes) + ' |'
    lines = [head, '|' + '---|' * (len(sizes) + 1)]
    plot_rows = []
    for name in names:
        runs = [r for r in results if r['encoding'] == name]
        cells = []
        for h, w in sizes:
            values = [row['value'] for r in runs for row in r['sweep']
                      if (row['height'], row['width']) == (h, w) and row['metric'] == 'mIoU']
            cells.append(mean_std(values))
            if values:
                plot_rows.append(dict(checkpoint=name, height=h, width=w, metric='mIoU',
                                      value=float(np.mean(values))))
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    equi = ['| encoding | block 0, roll 1 patch | last block, roll 1 patch | '
            'last block, roll 2 patches |', '|---|---|---|---|']
    for name in names:
        runs = [r for r in results if r['encoding'] == name]
        last = max(row['layer'] for row in runs[0]['equivariance'])

        def pick(run, layer, shift):
            return next(row['cosine'] for row in run['equivariance']
                        if row['layer'] == layer and (row['shift_y'], row['shift_x']) == shift)
        equi.append(f'| {name} | ' + ' | '.join([
            mean_std([pick(r, 0, (8, 8)) for r in runs], 4),
            mean_std([pick(r, last, (8, 8)) for r in runs], 4),
            mean_std([pick(r, last, (16, 0)) for r in runs], 4)]) + ' |')
    return '\n'.join(lines), '\n'.join(equi), plot_rows


def _compare(a: Sequence[float], b: Sequence[float]) -> str:
    """'higher' / 'lower' when the means differ by more than the two stds
    together (a crude, conservative test for 3 seeds), else 'within seed noise'."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    spread = (a.std(ddof=1) if len(a) > 1 else 0.) + (b.std(ddof=1) if len(b) > 1 else 0.)
    diff = a.mean() - b.mean()
    if abs(diff) <= spread:
        return f'within seed noise ({diff:+.1f} points, spread {spread:.1f})'
    return f'{"higher" if diff > 0 else "lower"} ({diff:+.1f} points, spread {spread:.1f})'


def digits_findings(results: List[dict]) -> List[str]:
    """Data-driven statements on resolution transfer and translation (digits)."""
    if not results:
        return []
    lines = []
    for protocol in PROTOCOLS:
        lines += _protocol_findings(results, protocol)
    return lines


def _protocol_findings(results: List[dict], protocol: str) -> List[str]:
    key = PROTOCOLS[protocol]
    native = f'{CANVAS}x{CANVAS}'
    others = [f'{h}x{w}' for h, w in DIGIT_EVAL_SIZES if (h, w) != (CANVAS, CANVAS)]
    names = [n for n in ENCODINGS if any(r['encoding'] == n for r in results)]
    per = {}
    for name in names:
        runs = [r for r in results if r['encoding'] == name]
        per[name] = dict(
            native=[r[key][native] for r in runs],
            off=[float(np.mean([r[key][s] for s in others])) for r in runs],
            shift=[r['shifted_acc'][f'{PATCH},{PATCH}'] for r in runs])
    lines = [f'### Digits, {protocol} protocol', '',
             f'| encoding | top-1 at {native} | mean top-1 at the other sizes | drop |',
             '|---|---|---|---|']
    for name in sorted(names, key=lambda n: -np.mean(per[n]['off'])):
        drops = np.asarray(per[name]['native']) - np.asarray(per[name]['off'])
        lines.append(f'| {name} | {mean_std(per[name]["native"])} | '
                     f'{mean_std(per[name]["off"])} | {mean_std(drops)} |')
    lines.append('')
    best_native = max(names, key=lambda n: np.mean(per[n]['native']))
    best_off = max(names, key=lambda n: np.mean(per[n]['off']))
    lines.append(f'- Best at the training size: **{best_native}**; best averaged over the '
                 f'other sizes: **{best_off}**.')
    for sape in ('SaPE2 query', 'SaPE2 key', 'SaPE2+APE'):
        if sape not in per:
            continue
        for base in ('APE', 'RoPE mixed', 'PEG', 'none'):
            if base in per:
                lines.append(f'- {sape} vs {base}: at {native} '
                             f'{_compare(per[sape]["native"], per[base]["native"])}; at other '
                             f'sizes {_compare(per[sape]["off"], per[base]["off"])}; on digits '
                             f'shifted by one patch '
                             f'{_compare(per[sape]["shift"], per[base]["shift"])}.')
    if 'APE' in per and 'none' in per:
        ape_drop = np.mean(per['APE']['native']) - np.mean(per['APE']['off'])
        none_drop = np.mean(per['none']['native']) - np.mean(per['none']['off'])
        cause = ('the changed pixels per patch, which every model suffers'
                 if protocol == 'resize' else
                 'the changed canvas (background tokens, crop), which every model suffers')
        verdict = ('APE loses more than the model without position encoding, as the '
                   'CPVT / RoPE-ViT tables report for DeiT'
                   if ape_drop > none_drop else
                   f'APE does NOT lose more than the model without position encoding here; '
                   f'the drop is dominated by {cause}, not by the resampled table')
        lines.append(f'- APE check ({protocol}): drop {ape_drop:.1f} points vs '
                     f'{none_drop:.1f} without position encoding: {verdict}.')
    lines.append('')
    return lines


def seg_findings(results: List[dict]) -> List[str]:
    if not results:
        return []
    names = [n for n in ENCODINGS if any(r['encoding'] == n for r in results)]
    base = f'{SEG_BASE[0]}x{SEG_BASE[1]}'
    lines = ['### Segmentation', '']
    per = {}
    for name in names:
        runs = [r for r in results if r['encoding'] == name]
        native = [next(row['value'] for row in r['sweep'] if row['metric'] == 'mIoU'
                       and f'{row["height"]}x{row["width"]}' == base) for r in runs]
        off = [float(np.mean([row['value'] for row in r['sweep'] if row['metric'] == 'mIoU'
                              and f'{row["height"]}x{row["width"]}' != base])) for r in runs]
        per[name] = dict(native=native, off=off)
        lines.append(f'- {name}: mIoU {mean_std(native)} at {base}, {mean_std(off)} averaged '
                     f'over the other sizes.')
    for sape in ('SaPE2 query', 'SaPE2 key', 'SaPE2+APE'):
        for other in ('APE', 'PEG', 'none'):
            if sape in per and other in per:
                lines.append(f'- {sape} vs {other}: at {base} '
                             f'{_compare(per[sape]["native"], per[other]["native"])}; other '
                             f'sizes {_compare(per[sape]["off"], per[other]["off"])}.')
    lines.append('')
    return lines


CAVEATS = [
    '### How to read these numbers', '',
    '- Resizing the whole input changes two things at once: the grid the position '
    'encoding sees and the pixels inside each patch (a digit at 48 px has strokes twice '
    'as wide per patch). Every model, including the one without position encoding, pays '
    'for the second; compare an encoding\'s drop with the "none" row to see what its '
    'position handling adds or costs.',
    '- The equivariance scores are exact by construction for "none" under whole-patch '
    'circular shifts (a ViT without position encoding is permutation-equivariant); '
    'values below 1 measure how much absolute position the trained model uses. A high '
    'score is not a goal in itself: digits are centred in training, so absolute '
    'position is a legitimate cue.',
    '- Mechanisms behind the two digit protocols: a learned APE is resampled with the '
    'image, so under "resize" the digit keeps its place in the table (only the pixels '
    'per patch change), while relative and content-based schemes see a digit twice as '
    'many tokens wide; under "pad" the digit keeps its pixels and moves to other table '
    'cells, which is the pure grid-change the CPVT / RoPE-ViT transfer numbers are '
    'about. Read the APE check of both protocols together.',
    '- RoPE rotates patch queries and keys but not the class token, so the class '
    'token\'s logits against patch keys depend on absolute position: RoPE patch '
    'features can be nearly shift-equivariant while the class-token readout is not '
    '(compare the feature cosine with the logit agreement). Sin-cos and learned APE '
    'add absolute position to every token.',
    '- SaPE² builds its bias from distances between content-dependent vectors of '
    'contextual (gate-counted) positions. Feature cosines close to the "none" row mean '
    'that, on this data, the trained bias carries little position information that '
    'moves with a shift; that reads as "equivariant", but check the accuracy columns '
    'before calling it a benefit.',
    '- Small budget: tiny models, a few epochs / iterations on CPU; the segmentation '
    'set has 48 training and 16 validation images. Differences within the seed spread '
    'are not evidence either way; nothing here says how the encodings compare at '
    'ImageNet / ADE20K scale.', '',
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as file:
            models = [line.split(':', 1)[1].strip() for line in file if 'model name' in line]
        cpu = f'{models[0]} x{len(models)}' if models else cpu
    except OSError:
        pass
    return (f'{platform.system()} {platform.release()}, {cpu}, Python '
            f'{platform.python_version()}, torch {torch.__version__} (CPU, 1 thread per part, '
            f'the two parts in parallel)')


def write_report(out_dir: str, digits: List[dict], seg: List[dict], *, command: str,
                 seeds: Sequence[int], epochs: int, seg_iters: int, quick: bool,
                 wall_s: float) -> str:
    """Write ``README.md`` and the plots into ``out_dir`` from the two parts'
    results; the other arguments record the run (command line, settings, wall
    time in seconds). Returns the markdown."""
    parts = [
        '# Position-encoding study: resolution transfer and translation equivariance', '',
        'Generated by `tools/analysis/pe_study.py`; every number below comes from the run '
        'recorded here (JSON: `digits_results.json`, `seg_results.json`). Do not edit by '
        'hand: rerun the command.', '',
        '## Command and machine', '',
        f'```bash\n{command}\n```', '',
        f'- machine: {machine()}',
        f'- wall time: {wall_s / 60:.1f} min; seeds: {list(seeds)}'
        + (' (**--quick smoke run: numbers are meaningless**)' if quick else ''), '',
    ]
    if digits:
        table, equi, plot_rows = digits_tables(digits, 'resize')
        pad_table, _, pad_rows = digits_tables(digits, 'pad')
        plot_rows += pad_rows
        plot_metric_vs_size(plot_rows, osp.join(out_dir, 'digits_resolution.png'),
                            title=f'digits: top-1 vs input size (trained at '
                            f'{CANVAS}x{CANVAS}, patch {PATCH})')
        plot_equivariance(digits, osp.join(out_dir, 'digits_equivariance.png'), (PATCH, PATCH),
                          'digits: per-block equivariance, circular roll by 1 patch')
        parts += [
            '## (a) Digits (scikit-learn `load_digits`, real 8x8 handwriting)', '',
            f'Setup: each digit bilinearly upscaled to {DIGIT_SIZE}x{DIGIT_SIZE}, centred on a '
            f'{CANVAS}x{CANVAS} canvas (background -1); fixed stratified split (1347 train / '
            f'450 test); ViT {"32-d, 2 blocks" if quick else "64-d, 4 blocks, 4 heads"}, '
            f'patch {PATCH}, class token (GAP for PEG+GAP); AdamW lr 2e-3, wd 0.05 (none on '
            f'PE parameters), batch 32, {epochs} epoch(s), 1 warm-up epoch + cosine, label '
            f'smoothing 0.1. Evaluated without fine-tuning: the whole test canvas resized '
            f'(bilinear, antialiased) to each size; "shift" columns translate the digit on '
            f'the {CANVAS}x{CANVAS} canvas by (dy, dx) pixels (background fill). Top-1 %, '
            f'mean ± std over {len(seeds)} seeds.', '',
            '**Resize protocol** (the whole canvas rescaled: grid and content change, as in '
            'the CPVT / RoPE-ViT transfer tables):', '',
            table, '',
            f'**Pad protocol** (the {CANVAS}x{CANVAS} canvas centred in a larger background '
            f'canvas, or centre-cropped: the digit keeps its pixels, only the grid around it '
            f'changes; shift columns repeated from above):', '',
            pad_table, '',
            '![digits resolution](digits_resolution.png)', '',
            'Translation equivariance (definitions in `mmsape/analysis/equivariance.py`): '
            'cosine similarity between the shifted input\'s feature map and the unshifted '
            'map moved by the same amount, averaged over tokens and 128 test images; '
            '"roll" = circular `torch.roll` (whole patches, and a sub-patch 2-pixel '
            'offset compared with the linearly interpolated map), "crop" = two '
            'overlapping crops compared on the overlap. Logit agreement = % of images '
            'whose predicted class is unchanged by the shift.', '',
            equi, '',
            '![digits equivariance](digits_equivariance.png)', '',
        ]
    if seg:
        table, equi, plot_rows = seg_tables(seg)
        plot_metric_vs_size(plot_rows, osp.join(out_dir, 'seg_resolution.png'),
                            title=f'demo segmentation: mIoU vs input size (trained at '
                            f'{SEG_BASE[0]}x{SEG_BASE[1]})')
        plot_equivariance(seg, osp.join(out_dir, 'seg_equivariance.png'), (8, 8),
                          'segmentation: per-block equivariance, roll by 1 patch')
        parts += [
            '## (b) Segmentation (generated ADE20K-format demo set, real mmseg)', '',
            f'Setup: `{SEG_CONFIG}` (ViT 96-d, 4 blocks, '
            f'patch 8, MultiLevelNeck + UPerNet) with `pos_encoding` swapped, trained through '
            f'MMEngine\'s Runner for {seg_iters} iterations (batch 4) at scale '
            f'{SEG_BASE[1]}x{SEG_BASE[0]} (keep ratio; APE table {SEG_BASE[0] // 8}x'
            f'{SEG_BASE[1] // 8}); then the config\'s test loop and IoUMetric at each size '
            f'(test `Resize` overridden to exactly HxW by `mmsape.analysis.resolution`; mIoU '
            f'% on the 16 validation images, predictions resized back to the label maps), '
            f'mean ± std over {len(seeds)} seeds.', '',
            table, '',
            '![seg resolution](seg_resolution.png)', '',
            'Equivariance of the backbone features (8 validation images, circular roll, '
            'cosine as above):', '',
            equi, '',
            '![seg equivariance](seg_equivariance.png)', '',
        ]
    parts += ['## Reading (computed from the tables above)', '']
    parts += digits_findings(digits) + seg_findings(seg) + CAVEATS
    report = '\n'.join(parts)
    with open(osp.join(out_dir, 'README.md'), 'w') as file:
        file.write(report)
    return report

