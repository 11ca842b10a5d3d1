"""Pretrained ViTs of mmseg, mmpretrain and timm, loaded into PosEncViT.

Each toolbox's own ViT is built with random weights and saved as a checkpoint file;
PosEncViT loads the file by the routes users take (``init_cfg`` with a path or a URL,
``PretrainedInit(prefix=...)``, a Runner's ``load_from`` of a whole segmentor), and
must then compute the source model's features, at its training size and at other
sizes, with the ``LearnedAPE`` setting documented for that source.
"""
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.model.weight_init import PretrainedInit
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

import mmsape.engine  # noqa: F401  (the safe checkpoint loaders, as configs import them)
from mmsape.models import PosEncViT
from mmsape.models.utils import load_vit_pretrained
from mmsape.utils import UnsafeCheckpointError

from builders import ROOT

TRAIN_SIZE, PATCH = 512, 16  # a 32 x 32 grid
WIDTH, DEPTH, HEADS, HIDDEN = 32, 2, 4, 64
ARCH = dict(embed_dims=WIDTH, num_layers=DEPTH, num_heads=HEADS, feedforward_channels=HIDDEN)
#: the training size; both axes shrunk; one shrunk, the other grown
SIZES = [(512, 512), (160, 288), (320, 544)]


def randomized(model: nn.Module) -> nn.Module:
    """Non-trivial values in every parameter (no zero bias, no unit LayerNorm)."""
    torch.manual_seed(0)
    for param in model.parameters():
        param.data.normal_(0, 0.2)
    model.eval()  # mmseg's train() returns None
    return model


def mmseg_vit(**kwargs) -> nn.Module:
    from mmseg.models.backbones import VisionTransformer
    args = dict(img_size=TRAIN_SIZE, patch_size=PATCH, embed_dims=WIDTH, num_layers=DEPTH,
                num_heads=HEADS, mlp_ratio=HIDDEN // WIDTH, out_indices=(0, DEPTH - 1),
                final_norm=True, norm_cfg=dict(type='LN', eps=1e-6))
    return randomized(VisionTransformer(**{**args, **kwargs}))


def mmpretrain_vit(**kwargs) -> nn.Module:
    from mmpretrain.models.backbones import VisionTransformer
    args = dict(arch=ARCH, img_size=TRAIN_SIZE, patch_size=PATCH, out_type='featmap',
                out_indices=[0, DEPTH - 1])
    return randomized(VisionTransformer(**{**args, **kwargs}))


def timm_vit(**kwargs) -> nn.Module:
    args = dict(img_size=TRAIN_SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH,
                num_heads=HEADS, mlp_ratio=HIDDEN / WIDTH, num_classes=0,
                dynamic_img_size=True)
    return randomized(TimmViT(**{**args, **kwargs}))


def pretrained_vit(checkpoint, antialias: bool = True, prefix=None, **kwargs) -> PosEncViT:
    """PosEncViT initialised from ``checkpoint`` through ``init_cfg`` (MMEngine's
    own PretrainedInit), with featmap outputs of every block."""
    args = dict(arch=ARCH, img_size=TRAIN_SIZE, patch_size=PATCH, out_type='featmap',
                out_indices=(0, DEPTH - 1),
                pos_encoding=dict(type='LearnedAPE', antialias=antialias),
                init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint), prefix=prefix))
    model = PosEncViT(**{**args, **kwargs})
    model.init_weights()
    return model.eval()


def save(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


def assert_same_features(actual, expected) -> None:
    assert len(actual) == len(expected)
    for out, ref in zip(actual, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def max_relative_difference(actual, expected) -> float:
    return max(((out - ref).abs().max() / ref.abs().max()).item()
               for out, ref in zip(actual, expected))


@pytest.fixture(scope='module')
def mmseg_source(tmp_path_factory):
    source = mmseg_vit()
    return source, save(source.state_dict(), tmp_path_factory.mktemp('mmseg') / 'vit.pth')


# --- each source reproduces its own model ----------------------------------------------


@pytest.mark.parametrize('size', SIZES)
def test_mmseg_checkpoint_reproduces_mmseg_vit(mmseg_source, size):
    source, path = mmseg_source
    model = pretrained_vit(path, antialias=False)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert_same_features(model(images), source(images))
    # mmseg's ViT has no patch-embedding bias: zero reproduces it (not the conv's init).
    assert model.load_report['filled'] == {'patch_embed.proj.bias': 0.}
    assert not model.load_report['missing'] and not model.load_report['unexpected']
    assert model.load_report['source'] == 'mmseg'


def test_plain_strict_load_state_dict_converts(mmseg_source):
    """torch's own load_state_dict runs the same hooks: nothing missing or unexpected."""
    source, _ = mmseg_source
    model = PosEncViT(arch=ARCH, img_size=TRAIN_SIZE, patch_size=PATCH, out_type='featmap',
                      out_indices=(0, DEPTH - 1),
                      pos_encoding=dict(type='LearnedAPE', antialias=False)).eval()
    result = model.load_state_dict(source.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    images = torch.randn(1, 3, 320, 544)
    with torch.no_grad():
        assert_same_features(model(images), source(images))


def test_mmseg_without_qkv_bias_gets_zero_attention_biases(tmp_path):
    # nn.MultiheadAttention(bias=False) drops the output projection's bias as well.
    source = mmseg_vit(qkv_bias=False)
    model = pretrained_vit(save(source.state_dict(), tmp_path / 'vit.pth'), antialias=False)
    images = torch.randn(1, 3, 160, 288)
    with torch.no_grad():
        assert_same_features(model(images), source(images))
    assert set(model.load_report['filled']) == {
        'patch_embed.proj.bias',
        *(f'blocks.{i}.attn.{name}.bias' for i in range(DEPTH) for name in ('qkv', 'proj'))}


@pytest.mark.parametrize('size', [(160, 288), (320, 544), (640, 640)])
def test_antialias_setting_must_match_the_source(mmseg_source, size):
    """The timm setting (antialias=True) does not reproduce mmseg at other sizes,
    shrinking or growing (PyTorch's antialiased bicubic is PIL's kernel)."""
    source, path = mmseg_source
    model = pretrained_vit(path, antialias=True)
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert max_relative_difference(model(images), source(images)) > 1e-3
        at_train_size = torch.randn(1, 3, TRAIN_SIZE, TRAIN_SIZE)
        assert_same_features(model(at_train_size), source(at_train_size))


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('source_scale, model_scale', [(0., 0.), (0.1, 0.1), (0., 0.1)])
def test_mmpretrain_checkpoint_reproduces_mmpretrain_vit(tmp_path, size, source_scale,
                                                         model_scale):
    source = mmpretrain_vit(layer_scale_init_value=source_scale)
    path = save(source.state_dict(), tmp_path / 'vit.pth')
    model = pretrained_vit(path, antialias=False, layer_scale_init_value=model_scale)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert_same_features(model(images), source(images))
    report = model.load_report
    assert report['source'] == 'mmpretrain' and not report['missing']
    # A source without LayerScale loaded into one with it: gamma = 1 reproduces it.
    expected_fills = ({f'blocks.{i}.ls{j}.gamma': 1. for i in range(DEPTH) for j in (1, 2)}
                      if model_scale and not source_scale else {})
    assert report['filled'] == expected_fills


@pytest.mark.parametrize('variant, model_args, filled', [
    (dict(), dict(), set()),
    (dict(qkv_bias=False), dict(), {f'blocks.{i}.attn.qkv.bias' for i in range(DEPTH)}),
    (dict(no_embed_class=True), dict(), set()),  # prefix_pos_embed set to zero by the APE
    (dict(reg_tokens=2), dict(num_register_tokens=2), set()),
])
@pytest.mark.parametrize('size', SIZES)
def test_timm_checkpoint_reproduces_timm_vit(tmp_path, variant, model_args, filled, size):
    source = timm_vit(**variant)
    model = pretrained_vit(save(source.state_dict(), tmp_path / 'vit.pth'), antialias=True,
                           out_type='raw', out_indices=-1, **model_args)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert_same_features(model(images), [source.forward_features(images)])
    assert set(model.load_report['filled']) == filled
    assert not model.load_report['missing'] and not model.load_report['unexpected']


def test_deit_file_with_model_wrapper(tmp_path):
    """DeiT's released files hold the weights under 'model', next to other entries."""
    source = timm_vit()
    path = save({'model': source.state_dict(), 'epoch': 300}, tmp_path / 'deit.pth')
    model = pretrained_vit(path, out_type='raw', out_indices=-1)
    images = torch.randn(1, 3, 160, 288)
    with torch.no_grad():
        assert_same_features(model(images), [source.forward_features(images)])


# --- every loading route ---------------------------------------------------------------


def test_init_cfg_url(mmseg_source, http_server):
    source, path = mmseg_source
    served, url = http_server
    shutil.copyfile(path, served / 'mmseg_vit.pth')
    model = pretrained_vit(f'{url}/mmseg_vit.pth', antialias=False)
    images = torch.randn(1, 3, 160, 288)
    with torch.no_grad():
        assert_same_features(model(images), source(images))


def configs_deit_checkpoint(base_url: str) -> str:
    """The DeiT-S URL of the configs (``configs/_base_/models/vit-s16.py``), on
    the test server: the same path and file name, another host."""
    entry = Config.fromfile(str(ROOT / 'configs/_base_/models/vit-s16.py')).deit_s16_pretrained
    assert set(entry) == {'type', 'checkpoint'} and entry.type == 'Pretrained'
    assert entry.checkpoint.startswith('https://dl.fbaipublicfiles.com/')
    return base_url + entry.checkpoint[len('https://dl.fbaipublicfiles.com'):]


def test_configs_deit_url_downloads_once_and_loads_with_keys_converted(http_server):
    """A DeiT release file (timm keys under 'model') at the configs' URL loads
    with no converter step: downloaded into the hub cache, its keys converted."""
    served, base_url = http_server
    url = configs_deit_checkpoint(base_url)
    source = timm_vit()
    (served / 'deit').mkdir()
    torch.save({'model': source.state_dict(), 'epoch': 300}, served / 'deit' / Path(url).name)
    model = pretrained_vit(url, out_type='raw', out_indices=-1)
    images = torch.randn(1, 3, 160, 288)
    with torch.no_grad():
        assert_same_features(model(images), [source.forward_features(images)])
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / 'deit_small_patch16_224-cd65a155.pth'
    assert cached.is_file() and str(cached).startswith(str(served.parent))


def test_crafted_file_at_the_configs_url_is_refused(http_server, write_malicious_checkpoint,
                                                     tmp_path):
    served, base_url = http_server
    url = configs_deit_checkpoint(base_url)
    (served / 'deit').mkdir()
    marker = tmp_path / 'code_ran'
    write_malicious_checkpoint(served / 'deit' / Path(url).name, marker)
    with pytest.raises(UnsafeCheckpointError, match=f'downloaded from {url}'):
        pretrained_vit(url)
    assert not marker.exists()


def seg_head() -> dict:
    return dict(type='FCNHead', in_channels=WIDTH, channels=8, num_convs=1, num_classes=3,
                in_index=-1, concat_input=False)


def segmentor(backbone: dict) -> nn.Module:
    from mmseg.models.segmentors import EncoderDecoder
    with DefaultScope.overwrite_default_scope('mmseg'):
        return EncoderDecoder(backbone=backbone, decode_head=seg_head()).eval()


def mmsape_backbone(**kwargs) -> dict:
    args = dict(type='mmsape.PosEncViT', arch=ARCH, img_size=TRAIN_SIZE, patch_size=PATCH,
                out_type='featmap', out_indices=(0, DEPTH - 1),
                pos_encoding=dict(type='LearnedAPE', antialias=False))
    return {**args, **kwargs}


@pytest.fixture(scope='module')
def mmseg_segmentor(tmp_path_factory):
    """A whole mmseg EncoderDecoder (its ViT + FCN head) saved as MMEngine does."""
    source = randomized(segmentor(dict(
        type='VisionTransformer', img_size=TRAIN_SIZE, patch_size=PATCH, embed_dims=WIDTH,
        num_layers=DEPTH, num_heads=HEADS, mlp_ratio=HIDDEN // WIDTH,
        out_indices=(0, DEPTH - 1), final_norm=True, norm_cfg=dict(type='LN', eps=1e-6))))
    path = tmp_path_factory.mktemp('segmentor') / 'segmentor.pth'
    return source, save({'meta': {}, 'state_dict': source.state_dict()}, path)


def load_from(model: nn.Module, checkpoint: str, work_dir) -> nn.Module:
    """What ``load_from=checkpoint`` in a config does: a Runner loads it before training."""
    runner = Runner(model=model, work_dir=str(work_dir), load_from=checkpoint,
                    experiment_name=f'load_from_{work_dir.name}', default_scope='mmseg',
                    log_level='WARNING')
    runner.load_or_resume()
    return runner.model


@pytest.mark.parametrize('size', [(512, 512), (160, 288)])
def test_load_from_whole_mmseg_segmentor(mmseg_segmentor, tmp_path, size):
    source, path = mmseg_segmentor
    model = load_from(segmentor(mmsape_backbone()), path, tmp_path)
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert_same_features(model.backbone(images), source.backbone(images))
        assert_same_features([model._forward(images)], [source._forward(images)])
    assert model.backbone.load_report['filled'] == {'patch_embed.proj.bias': 0.}


def test_pretrained_init_with_prefix(mmseg_segmentor):
    source, path = mmseg_segmentor
    for prefix in ('backbone.', None):  # given, or found: the file has no ViT of its own
        model = pretrained_vit(path, antialias=False, prefix=prefix)
        images = torch.randn(1, 3, 160, 288)
        with torch.no_grad():
            assert_same_features(model(images), source.backbone(images))

    # The same route, called by hand.
    model = PosEncViT(**{k: v for k, v in mmsape_backbone().items() if k != 'type'}).eval()
    PretrainedInit(checkpoint=path, prefix='backbone.')(model)
    with torch.no_grad():
        assert_same_features(model(images), source.backbone(images))


def test_own_checkpoints_load_unchanged(tmp_path, monkeypatch):
    """mmsape's keys are recognised: nothing converted, filled or reported, by
    load_from (whole segmentor) or PretrainedInit(prefix)."""
    import mmsape.models.backbones.pos_enc_vit as pos_enc_vit
    logged = []
    monkeypatch.setattr(pos_enc_vit, 'print_log', lambda msg, **kwargs: logged.append(msg))
    backbone = mmsape_backbone(img_size=(256, 512), layer_scale_init_value=0.1,
                               qkv_bias=False, pos_encoding=dict(type='LearnedAPE'))
    source = randomized(segmentor(backbone))
    path = save({'meta': {}, 'state_dict': source.state_dict()}, tmp_path / 'own.pth')

    loaded = load_from(segmentor(backbone), path, tmp_path)
    expected = source.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert_nothing_converted(loaded.backbone.load_report)

    model = PosEncViT(**{k: v for k, v in backbone.items() if k != 'type'})
    PretrainedInit(checkpoint=path, prefix='backbone.')(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected['backbone.' + key]), key
    assert_nothing_converted(model.load_report)
    assert not logged


def assert_nothing_converted(report: dict) -> None:
    assert report['source'] == 'mmsape' and not report['whole_model']
    for entry in ('missing', 'unexpected', 'resized', 'mismatched', 'filled'):
        assert not report[entry], entry


def test_whole_model_file_keeps_non_square_table_grid(tmp_path):
    """A 2x8 table has the token count of 4x4: the grid recorded in the state dict's
    metadata must follow the keys when 'backbone.' is taken out of a whole model."""
    args = dict(arch=ARCH, patch_size=PATCH, out_type='featmap')
    source = nn.ModuleDict(dict(backbone=randomized(PosEncViT(img_size=(32, 128), **args))))
    path = save(source.state_dict(), tmp_path / 'whole.pth')
    model = PosEncViT(img_size=(64, 64), init_cfg=dict(type='Pretrained', checkpoint=path),
                      **args)
    model.init_weights()
    table = source.backbone.pos_encoding.pos_embed.detach()
    expected = F.interpolate(table.reshape(1, 2, 8, WIDTH).permute(0, 3, 1, 2), size=(4, 4),
                             mode='bicubic', antialias=True, align_corners=False)
    torch.testing.assert_close(model.pos_encoding.pos_embed.detach(),
                               expected.permute(0, 2, 3, 1).reshape(1, 16, WIDTH))


def test_load_vit_pretrained_reports_mismatch(tmp_path):
    """A tensor of another shape is skipped with a report, not loaded half-way."""
    source = timm_vit()
    state = source.state_dict()
    state['blocks.0.mlp.fc1.weight'] = torch.zeros(HIDDEN + 1, WIDTH)
    model = PosEncViT(arch=ARCH, img_size=TRAIN_SIZE, patch_size=PATCH)
    before = model.blocks[0].mlp.fc1.weight.detach().clone()
    report = load_vit_pretrained(model, save(state, tmp_path / 'vit.pth'))
    assert report['mismatched'] == [('blocks.0.mlp.fc1.weight', (HIDDEN + 1, WIDTH),
                                     (HIDDEN, WIDTH))]
    assert torch.equal(model.blocks[0].mlp.fc1.weight, before)
    torch.testing.assert_close(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
