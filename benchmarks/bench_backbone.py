"""Latency and peak memory of a whole ViT backbone with each position encoding.

Builds ``PosEncViT(arch=--arch, patch_size=16)`` (default ``'deit-small'``: 12
blocks, embed 384, 6 heads; ``'base'`` is ViT-B) with one class token and
``out_type='cls_token'`` for square images of ``--tokens`` patch tokens (196 ->
224 px, 1024 -> 512 px, 2304 -> 768 px, 4096 -> 1024 px; ``img_size`` is the
measured size, so learned APE is never interpolated), batch ``--batch`` (1),
and measures, per encoding (the ViTDet-window rows have no class token and
output the feature map; the ``*_compiled`` rows are the same backbones under
``torch.compile``, compiled in the untimed warm-up call, and with ``--amp``
everything runs under bfloat16 autocast):

* forward: ``model.eval()`` under ``torch.no_grad()`` (inference);
* forward+backward: ``model.train()`` (all dropout and drop-path rates are 0),
  backward of a random cotangent of the class token into every parameter.

Each is run once before it is timed; latency is the median of ``--repeats``.
Ratios are to the learned-APE backbone (plain fused attention) measured in the
same run: on a shared machine absolute times are noisy, ratios less so.
Peak memory is the growth of the resident high-water mark (CPU, measured in a
child process whose allocator returns large blocks at once) or of
``torch.cuda.max_memory_allocated`` (CUDA), over the memory held before the
call (model and input included in that baseline); see
``benchmarks/_measure.py``.

The paper-style dense SaPE² keeps a (B, heads, N, N) bias per block for
backward; it is skipped above ``--dense-max-tokens`` (default 1024), where it
is too slow and too large for a small machine; the table says so.

Example::

    python benchmarks/bench_backbone.py --tokens 196 1024 --repeats 3 --threads 1
    python benchmarks/bench_backbone.py --encodings ape sape2 sape2_fused --tokens 4096
    python benchmarks/bench_backbone.py --device cuda --arch base --amp --tokens 4096 \
        --encodings ape sape2 ape_window sape2_window sape2_window_compiled
"""
import argparse
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch

# Runnable from a checkout without installing mmsape.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from benchmarks._measure import (  # noqa: E402
    SKIPPED,
    add_json_option,
    measure_latency_and_memory,
    print_memory_for_parent,
    ratio_row,
    write_json,
)
from mmsape.models import PosEncViT  # noqa: E402

PATCH_SIZE = 16
#: name -> (table label, pos_encoding config of PosEncViT).
ENCODINGS: Dict[str, Tuple[str, object]] = {
    'ape': ('learned APE (plain SDPA)', dict(type='LearnedAPE')),
    'sape2': ("SaPE² exact, impl='auto'", dict(type='SaPE2')),
    'sape2_dense': ("SaPE² exact, impl='dense' (paper-style)",
                    dict(type='SaPE2', impl='dense')),
    'sape2_squared': ("SaPE² squared distance, impl='auto'",
                      dict(type='SaPE2', distance='squared')),
    'sape2_fused': ("SaPE² squared distance, impl='fused' (SDPA)",
                    dict(type='SaPE2', distance='squared', impl='fused')),
    'sape2_ape': ('SaPE² + APE', [dict(type='LearnedAPE'), dict(type='SaPE2')]),
    'peg': ('PEG (CPVT, after block 0)', dict(type='PEG')),
    'rope_mixed': ('2D RoPE mixed', dict(type='RoPE2D', mode='mixed')),
    'rope_axial': ('2D RoPE axial', dict(type='RoPE2D', mode='axial')),
    'rope_normalized': ('2D RoPE, DINOv3 normalised coords (rescale 2)',
                        dict(type='RoPE2D', normalize_coords='separate', rescale_coords=2.)),
    'lookhere': ('LookHere LH-180', dict(type='LookHere')),
    'pape': ('PaPE, 50 parabolas (SDPA on augmented q/k)', dict(type='PaPE')),
    'pape_ri': ('PaPE-RI (SDPA on augmented q/k)', dict(type='PaPE', rotation_invariant=True)),
    'ape_window': ('learned APE, ViTDet windows', dict(type='LearnedAPE')),
    'sape2_window': ('SaPE² exact, ViTDet windows', dict(type='SaPE2')),
    'lookhere_window': ('LookHere LH-180, ViTDet windows', dict(type='LookHere')),
    'pape_window': ('PaPE, ViTDet windows', dict(type='PaPE')),
    'query_distance': ("query-relative SaPE², distance, impl='auto'",
                       dict(type='SaPE2', count_from='query')),
    'lookup': ("query-relative SaPE², lookup, impl='auto'",
               dict(type='SaPE2', count_from='query', bias='lookup')),
    'lookup_fused': ("query-relative SaPE², lookup, impl='fused' (SDPA)",
                     dict(type='SaPE2', count_from='query', bias='lookup', impl='fused')),
    'lookup_peg': ("query-relative SaPE², lookup, + PEG",
                   [dict(type='SaPE2', count_from='query', bias='lookup'), dict(type='PEG')]),
    'lookup_window': ('query-relative SaPE², lookup, ViTDet windows',
                      dict(type='SaPE2', count_from='query', bias='lookup')),
    'ape_compiled': ('learned APE, torch.compile', dict(type='LearnedAPE')),
    'sape2_compiled': ("SaPE² exact, impl='auto', torch.compile", dict(type='SaPE2')),
    'ape_window_compiled': ('learned APE, ViTDet windows, torch.compile',
                            dict(type='LearnedAPE')),
    'sape2_window_compiled': ('SaPE² exact, ViTDet windows, torch.compile',
                              dict(type='SaPE2')),
}
#: ViTDet-style blocks (as in configs/mask_rcnn): 14 x 14 windows, except four
#: global blocks; no class token, the feature map out.
WINDOW_OPTIONS = dict(window_size=14, global_attn_indexes=(2, 5, 8, 11), with_cls_token=False,
                      out_type='featmap')
#: name -> extra PosEncViT arguments.
BACKBONE_OPTIONS = {'ape_window': WINDOW_OPTIONS, 'sape2_window': WINDOW_OPTIONS,
                    'lookhere_window': WINDOW_OPTIONS, 'lookup_window': WINDOW_OPTIONS,
                    'pape_window': WINDOW_OPTIONS,
                    'ape_window_compiled': WINDOW_OPTIONS, 'sape2_window_compiled': WINDOW_OPTIONS}
REFERENCE = 'ape'
Results = Dict[int, Dict[str, Dict[str, float]]]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tokens', type=int, nargs='+', default=[196, 1024, 2304, 4096],
                        help='patch tokens; each must be a perfect square')
    parser.add_argument('--encodings', nargs='+', choices=list(ENCODINGS),
                        default=list(ENCODINGS),
                        help=f'{REFERENCE!r} is always added: the ratios need it')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs; the median is shown')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--arch', default='deit-small', choices=sorted(PosEncViT.arch_zoo),
                        help="PosEncViT arch: 'deit-small' (ViT-S) or 'base' (ViT-B), ...")
    parser.add_argument('--batch', type=int, default=1, help='images per batch')
    parser.add_argument('--amp', action='store_true',
                        help='run under torch.autocast (bfloat16), as mixed-precision training')
    parser.add_argument('--compile-backend', default='inductor',
                        help="torch.compile backend of the '*_compiled' rows")
    parser.add_argument('--dense-max-tokens', type=int, default=1024,
                        help="largest token count at which 'sape2_dense' is run")
    parser.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args(argv)
    for tokens in args.tokens:
        if math.isqrt(tokens)**2 != tokens:
            parser.error(f'--tokens {tokens} is not a perfect square')
    if REFERENCE not in args.encodings:
        args.encodings = [REFERENCE] + args.encodings
    return args


def make_case(encoding: str, tokens: int,
              args: argparse.Namespace) -> Tuple[Callable[[], None], Callable[[], None]]:
    """The model, its input and the two closures to measure."""
    image_size = math.isqrt(tokens) * PATCH_SIZE
    device = torch.device(args.device)
    model = PosEncViT(arch=args.arch, img_size=image_size, patch_size=PATCH_SIZE,
                      pos_encoding=ENCODINGS[encoding][1],
                      **BACKBONE_OPTIONS.get(encoding, {})).to(device)
    # Compiled on the first (warm-up) call, once for eval without grad and
    # once for training.
    run = (torch.compile(model, backend=args.compile_backend)
           if encoding.endswith('_compiled') else model)
    images = torch.randn(args.batch, 3, image_size, image_size, device=device)
    cotangent = []  # made on the first call, in the shape of the output
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def forward() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            run(images)

    def forward_backward() -> None:
        model.train()
        with autocast:
            out = run(images)[0]
        if not cotangent:
            cotangent.append(torch.randn(out.shape, device=device,
                                         generator=torch.Generator(device).manual_seed(0)))
        out.backward(cotangent[0])
        model.zero_grad(set_to_none=True)

    return forward, forward_backward


def skipped(encoding: str, tokens: int, args: argparse.Namespace) -> bool:
    return encoding == 'sape2_dense' and tokens > args.dense_max_tokens


def format_table(results: Results, encodings: List[str]) -> str:
    lines = ['| tokens (image) | encoding | fwd ms | vs APE | fwd+bwd ms | vs APE | '
             'fwd peak MiB | vs APE | fwd+bwd peak MiB | vs APE |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for tokens, per_encoding in results.items():
        side = math.isqrt(tokens) * PATCH_SIZE
        reference = per_encoding.get(REFERENCE, {})
        for encoding in encodings:
            row = per_encoding.get(encoding, {})
            if SKIPPED in row:
                columns = ['skipped (too slow / large)', ''] + [''] * 6
            else:
                columns = ratio_row(row, reference)
            lines.append(f'| {tokens} ({side}x{side}) | {ENCODINGS[encoding][0]} | '
                         + ' | '.join(columns) + ' |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print_memory_for_parent(make_case, args, args.encodings, skipped)
        return
    results, memory_note = measure_latency_and_memory(
        args, argv, __file__, make_case, args.encodings, skip=skipped)
    arch = PosEncViT.arch_zoo[args.arch]
    device = (torch.cuda.get_device_name(args.device) if args.device.startswith('cuda')
              else f'cpu, {args.threads} thread(s)')
    print(f'PosEncViT {args.arch!r}/{PATCH_SIZE} backbone ({arch["num_layers"]} blocks, embed '
          f'{arch["embed_dims"]}, {arch["num_heads"]} heads, class token), batch {args.batch}; '
          f'{device}; {"bfloat16 autocast" if args.amp else "float32"}; compiled rows: '
          f'torch.compile(backend={args.compile_backend!r}); latency: median of '
          f'{args.repeats}; peak memory: {memory_note}; torch {torch.__version__}.\n')
    print(format_table(results, args.encodings))
    write_json(args.json, results)


if __name__ == '__main__':
    main()
