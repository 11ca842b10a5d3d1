"""Check that the installed OpenMMLab stack imports, compiled ops included.

Run by ``tools/setup_env.sh``; prints one line per component and exits non-zero,
naming the component and the fix, when one fails. Where a CUDA GPU is present,
mmcv's ops must also run on it: mmdet's RoIAlign and NMS on CUDA tensors need
mmcv built with CUDA (unless ``MMSAPE_MMCV_CUDA=0`` says it was built without, on
purpose).

Usage: ``python tools/verify_env.py [--only LABEL ...]``
"""
import argparse
import importlib
import os
import sys
from typing import Callable, List, Optional, Tuple

#: ``(label, module to import, hint shown when it fails)``.
CHECKS = [
    ('torch', 'torch', None),
    ('torchvision.ops', 'torchvision.ops', 'torch and torchvision builds differ: '
     're-run tools/setup_env.sh (it pins torch===2.13.0 from PyPI)'),
    ('mmengine', 'mmengine', None),
    ('mmcv.ops', 'mmcv.ops', "mmcv was built without ops ('No module named mmcv._ext'): "
     'pip uninstall mmcv, then re-run tools/setup_env.sh'),
    ('mmdet.models', 'mmdet.models', None),
    ('mmseg.models', 'mmseg.models', 'mmsegmentation needs ftfy and regex; '
     "'mmseg' on PyPI is a different package"),
    ('mmpretrain.models', 'mmpretrain.models', None),
    ('timm', 'timm', None),
    ('mmsape', 'mmsape', None),
]
MMCV_CUDA_LABEL = 'mmcv.ops (CUDA)'
MMCV_CUDA_HINT = ('mmcv was built without CUDA: pip uninstall mmcv, then re-run '
                  'tools/setup_env.sh on this machine (it builds mmcv with CUDA where nvcc '
                  'is found)')


def check_import(module: str) -> str:
    importlib.import_module(module)
    return getattr(sys.modules[module.split('.')[0]], '__version__', '')


def check_mmcv_cuda_ops() -> str:
    """RoIAlign (what mmdet's RoI heads run) on a CUDA tensor, against a
    hand-computed value: a constant map averages to the constant."""
    import torch
    from mmcv.ops import roi_align
    features = torch.full((1, 1, 8, 8), 3., device='cuda')
    rois = torch.tensor([[0., 1., 1., 5., 5.]], device='cuda')
    pooled = roi_align(features, rois, (2, 2), spatial_scale=1., sampling_ratio=2)
    if pooled.shape != (1, 1, 2, 2) or not torch.allclose(pooled, torch.full_like(pooled, 3.)):
        raise RuntimeError(f'roi_align on CUDA gave {pooled.flatten().tolist()}, expected 3s')
    return torch.cuda.get_device_name()


def checks() -> List[Tuple[str, Callable[[], str], Optional[str]]]:
    """Every check: ``(label, run, hint)``; the CUDA one only where a GPU is present."""
    listed = [(label, lambda module=module: check_import(module), hint)
              for label, module, hint in CHECKS]
    import torch
    # MMSAPE_MMCV_CUDA=0: tools/setup_env.sh built mmcv without CUDA on purpose.
    if torch.cuda.is_available() and os.environ.get('MMSAPE_MMCV_CUDA') != '0':
        listed.insert(4, (MMCV_CUDA_LABEL, check_mmcv_cuda_ops, MMCV_CUDA_HINT))
    return listed


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--only', nargs='+', metavar='LABEL',
                        help=f'run only these checks (labels as printed, e.g. '
                        f'{MMCV_CUDA_LABEL!r})')
    args = parser.parse_args(argv)
    selected = [c for c in checks() if args.only is None or c[0] in args.only]
    if args.only and len(selected) < len(args.only):
        missing = sorted(set(args.only) - {label for label, _, _ in selected})
        print(f'  FAIL {", ".join(missing)}: no such check here (the CUDA check needs a GPU)')
        return 1
    failed = False
    for label, run, hint in selected:
        try:
            print(f'  ok  {label:<18} {run()}')
        except Exception as exc:  # noqa: BLE001 - report every failure kind
            failed = True
            print(f'  FAIL {label:<17} {type(exc).__name__}: {exc}')
            if hint:
                print(f'       fix: {hint}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
