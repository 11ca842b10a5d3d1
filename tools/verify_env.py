"""Check that the installed OpenMMLab stack imports, compiled ops included.

Run by ``tools/setup_env.sh``; prints one line per component and exits non-zero,
naming the component and the fix, when one fails.
"""
import importlib
import sys

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


def main() -> int:
    failed = False
    for label, module, hint in CHECKS:
        try:
            importlib.import_module(module)
            top = sys.modules[module.split('.')[0]]
            print(f'  ok  {label:<18} {getattr(top, "__version__", "")}')
        except Exception as exc:  # noqa: BLE001 - report every failure kind
            failed = True
            print(f'  FAIL {label:<17} {type(exc).__name__}: {exc}')
            if hint:
                print(f'       fix: {hint}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
