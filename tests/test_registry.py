"""mmsape's types resolve from every toolbox's registry, and mistakes are named."""
import subprocess
import sys

import pytest

from builders import TINY_ARCH


def run_fresh(code: str) -> subprocess.CompletedProcess:
    """Run in a new interpreter, so that nothing imported by other tests helps."""
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg', 'mmpretrain'])
def test_scoped_type_found_from_other_toolboxes(toolbox):
    """type='mmsape.PosEncViT' builds from mmdet / mmseg / mmpretrain registries
    without importing mmsape first (MMEngine imports mmsape.registry on demand)."""
    result = run_fresh(
        f'from {toolbox}.registry import MODELS\n'
        f'from {toolbox}.utils import register_all_modules\n'
        'register_all_modules()\n'
        f"m = MODELS.build(dict(type='mmsape.PosEncViT', arch={TINY_ARCH!r}, img_size=32,\n"
        "                  patch_size=8, pos_encoding=dict(type='SaPE2')))\n"
        "print(type(m).__module__, type(m.pos_encoding).__name__)\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['mmsape.models.backbones.pos_enc_vit', 'SaPE2']


def test_scoped_neck_and_norm_from_mmdet():
    result = run_fresh(
        'from mmdet.utils import register_all_modules\n'
        'register_all_modules()\n'
        'from mmdet.registry import MODELS\n'
        'from mmcv.cnn import build_norm_layer\n'
        "neck = MODELS.build(dict(type='mmsape.SimpleFPN', in_channels=32, out_channels=8))\n"
        "name, norm = build_norm_layer(dict(type='mmsape.LN2d'), 8)\n"
        'print(type(neck).__name__, type(norm).__name__, name)\n')
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['SimpleFPN', 'LayerNorm2d', 'ln']


def test_plain_names_in_mmsape_scope():
    from mmsape.registry import MODELS
    from mmsape.utils import register_all_modules
    register_all_modules()
    model = MODELS.build(dict(type='PosEncViT', arch=TINY_ARCH, img_size=32, patch_size=8,
                              pos_encoding=dict(type='PEG')))
    assert type(model.pos_encoding).__name__ == 'PEG'


def test_unknown_encoding_lists_registered_ones():
    from mmsape.models.pos_encodings import build_pos_encoding
    with pytest.raises(KeyError) as error:
        build_pos_encoding(dict(type='mmsape.Sape3'), embed_dims=32, num_heads=4, num_layers=2)
    message = str(error.value)
    assert "'mmsape.Sape3'" in message
    for name in ('CoPE1D', 'LearnedAPE', 'NoPositionEncoding', 'PEG', 'RoPE2D', 'SaPE2',
                 'SinCos2DPositionEncoding'):
        assert name in message


def test_unknown_backbone_names_the_registry():
    result = run_fresh(
        'from mmdet.registry import MODELS\n'
        "MODELS.build(dict(type='mmsape.PosEncVit'))\n")
    assert result.returncode != 0
    assert 'PosEncVit' in result.stderr and 'not in the' in result.stderr


def test_options_of_another_encoding_are_named():
    """Swapping only pos_encoding.type leaves the old encoding's options behind:
    the error names them and says what to do."""
    from mmsape.models.pos_encodings import build_pos_encoding
    with pytest.raises(TypeError, match=r'LearnedAPE does not take the option\(s\) '
                                        r'num_positions.*remove them'):
        build_pos_encoding(dict(type='LearnedAPE', num_positions=10), embed_dims=32,
                           num_heads=4, num_layers=2)


def test_register_all_modules_goes_through_the_registry_locations():
    """mmsape.utils imports no upper layer; register_all_modules fills every
    registry through its ``locations``."""
    result = run_fresh(
        'import sys\n'
        'import mmsape.utils\n'
        "upper = ('mmsape.models', 'mmsape.engine', 'mmsape.datasets')\n"
        'print(sorted(name for name in upper if name in sys.modules))\n'
        'mmsape.utils.register_all_modules()\n'
        'from mmsape.registry import HOOKS, MODELS, POS_ENCODINGS, TRANSFORMS\n'
        "expected = [(MODELS, 'PosEncViT'), (MODELS, 'PaddingAwareMaskRCNN'),\n"
        "            (MODELS, 'SimpleFPN'), (POS_ENCODINGS, 'SaPE2'),\n"
        "            (HOOKS, 'AtomicCheckpointHook'), (TRANSFORMS, 'CheckSegLabelRange')]\n"
        # module_dict, not get(): get() would import the locations itself.
        'print([name for registry, name in expected if name not in registry.module_dict])\n')
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split('\n')[:2] == ['[]', '[]']


def test_registry_locations_exist():
    import importlib.util

    from mmengine.registry import Registry

    import mmsape.registry
    registries = [r for r in vars(mmsape.registry).values()
                  if isinstance(r, Registry) and r.scope == 'mmsape']
    assert len(registries) >= 6
    for registry in registries:
        for location in registry._locations:
            assert importlib.util.find_spec(location) is not None, (registry.name, location)
