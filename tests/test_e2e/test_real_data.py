"""The path from a dataset on disk to a trained, evaluated model, as README's
"Training on real data" writes it down, on the generated ADE20K / COCO layouts:
the documented commands and overrides, the checks that stop a run before
anything is built, and pretrained weights named by URL (served from 127.0.0.1;
the ``offline_env`` of the subprocesses sends any other host to a closed port).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from mmsape.testing.demo_data import ensure_demo_data
from mmsape.utils import load_checkpoint_safely

from builders import DEMO_CONFIGS, ROOT, load_tool, readme_command, readme_commands

pytestmark = pytest.mark.e2e
ADE_SECTION = 'ADE20K: semantic segmentation'
SEG_DEMO = DEMO_CONFIGS['seg']
DEIT_FILE = 'deit_small_patch16_224-cd65a155.pth'


@pytest.fixture(scope='module')
def demo_root() -> Path:
    return ensure_demo_data(ROOT / 'data' / 'demo')


def run(words, env, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([str(word) for word in words], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def succeeded(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-4000:] + '\n' + result.stderr[-6000:]
    return result.stdout + result.stderr


def save_deit_small(path: Path) -> Path:
    """A DeiT-S in the DeiT release's layout (timm keys under 'model'), random."""
    torch.manual_seed(0)
    model = TimmViT(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    torch.save({'model': model.state_dict()}, path)
    return path


def test_readme_ade20k_section_on_the_generated_layout(demo_root, tmp_path, offline_env):
    """README's ADE20K commands, the data folder variable set to the generated
    layout, with its offline override for DeiT-S's weights: training on the
    layout, then testing the checkpoint on its validation images. Appended
    options only shorten the run (2 iterations of 64 x 64 crops, 2 test images
    at 64 pixels, no worker processes)."""
    ade = demo_root / 'ade' / 'ADEChallengeData2016'
    train = readme_command(ADE_SECTION, 'tools/train.py', ADE=str(ade))
    _, (offline, _) = readme_commands('Pretrained weights: URL or local file')
    override = offline[-1].split('=')[0]  # a local copy of the weights
    assert override == 'model.backbone.init_cfg.checkpoint'
    deit = save_deit_small(tmp_path / DEIT_FILE)
    work_dir = tmp_path / 'work'
    loaders = ('train_dataloader', 'test_dataloader')
    output = succeeded(run(train + [
        f'{override}={deit}',
        'train_cfg.max_iters=2', 'train_cfg.val_begin=1000', 'train_dataloader.batch_size=2',
        'train_dataloader.dataset.pipeline.2.scale=(256,64)',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
        'model.data_preprocessor.size=(64,64)',
        *[f'{loader}.{option}' for loader in loaders
          for option in ('num_workers=0', 'persistent_workers=False')],
        '--work-dir', work_dir], offline_env))
    assert 'Loaded ViT weights saved by timm into PosEncViT' in output
    assert f'load model from: {deit}' in output
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.is_file()

    test = readme_command(ADE_SECTION, 'tools/test.py', ADE=str(ade))
    documented_checkpoint = test.index('work_dirs/upernet_vit-s16-sape2_mln_8xb2-160k_ade20k-'
                                       '512x512/iter_160000.pth')
    test[documented_checkpoint] = str(checkpoint)
    metrics = tmp_path / 'metrics.json'
    succeeded(run(test + [
        'test_dataloader.dataset.indices=2', 'test_dataloader.dataset.pipeline.1.scale=(256,64)',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        '--work-dir', tmp_path / 'test', '--metrics-out', metrics], offline_env))
    assert math.isfinite(json.loads(metrics.read_text())['mIoU'])

    # the multi-size evaluation's documented command is one the tool takes
    sweep = readme_command(ADE_SECTION, 'tools/analysis/resolution_sweep.py', ADE=str(ade))
    args = load_tool('resolution_sweep').parse_args(sweep[2:])
    assert args.model[0][0].startswith('configs/upernet/') and args.metrics == ['mIoU']


def test_tools_stop_before_building_when_inputs_are_missing(tmp_path, offline_env):
    """tools/train.py on the full COCO config with no data and no pretrained file,
    tools/test.py on the full ADE20K config with no data: one message listing
    each, no traceback, no work folder."""
    coco, ade = tmp_path / 'coco', tmp_path / 'ADEChallengeData2016'
    work_dir = tmp_path / 'work'
    result = run([sys.executable, 'tools/train.py',
                  'configs/mask_rcnn/mask-rcnn_vit-s16-sape2_simplefpn_lsj-100e_coco.py',
                  '--work-dir', work_dir, '--cfg-options',
                  f'train_dataloader.dataset.dataset.data_root={coco}',
                  f'val_dataloader.dataset.data_root={coco}',
                  f'val_evaluator.ann_file={coco}/annotations/instances_val2017.json',
                  f'model.backbone.init_cfg.checkpoint={tmp_path / DEIT_FILE}'], offline_env,
                 timeout=300)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr, result.stderr[-4000:]
    message = result.stderr
    assert 'MissingInputError: The run was not started: 4 of its inputs are missing' in message
    assert (f'train_dataloader.dataset.dataset (CocoDataset, mmdet): data_root {coco} does '
            'not exist') in message
    assert '--cfg-options train_dataloader.dataset.dataset.data_root=/path/to/coco' in message
    assert 'README.md#coco-detection-and-instance-segmentation' in message
    assert 'val_evaluator (CocoMetric): no annotation file' in message
    assert '--cfg-options model.backbone.init_cfg=None' in message
    assert not work_dir.exists()

    checkpoint = tmp_path / 'iter_1.pth'
    torch.save({'state_dict': {}}, checkpoint)
    result = run([sys.executable, 'tools/test.py',
                  'configs/upernet/upernet_vit-s16-sape2_mln_8xb2-160k_ade20k-512x512.py',
                  checkpoint, '--work-dir', work_dir, '--cfg-options',
                  f'test_dataloader.dataset.data_root={ade}'], offline_env, timeout=300)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert 'MissingDataError: The run was not started: 1 of its inputs is missing' in (
        result.stderr)
    assert f'test_dataloader.dataset (ADE20KDataset, mmseg): data_root {ade}' in result.stderr
    assert f'{ade}/images/validation/*.jpg' in result.stderr
    assert 'README.md#ade20k-semantic-segmentation' in result.stderr
    assert not work_dir.exists()


def test_train_tool_loads_pretrained_weights_by_url(demo_root, http_server, offline_env,
                                                     tmp_path):
    """A DeiT / timm-layout checkpoint for the demo segmenter's backbone, named by
    its URL on 127.0.0.1: the check reaches it, the first run downloads it into
    the hub cache of TORCH_HOME, and the backbone starts from its weights."""
    served, url = http_server
    torch.manual_seed(0)
    source = TimmViT(img_size=(128, 192), patch_size=8, embed_dim=96, depth=4, num_heads=3,
                     mlp_ratio=2)
    (served / 'deit').mkdir()
    torch.save({'model': source.state_dict()}, served / 'deit' / DEIT_FILE)
    work_dir = tmp_path / 'work'
    output = succeeded(run([
        sys.executable, 'tools/train.py', SEG_DEMO, '--work-dir', work_dir, '--cfg-options',
        'model.backbone.init_cfg.type=Pretrained',
        f'model.backbone.init_cfg.checkpoint={url}/deit/{DEIT_FILE}',
        'train_cfg.max_iters=1', 'train_cfg.val_begin=100', 'default_hooks.checkpoint.interval=1',
        'custom_hooks=[]'], offline_env))
    assert 'Loaded ViT weights saved by timm into PosEncViT' in output
    assert (Path(offline_env['TORCH_HOME']) / 'hub' / 'checkpoints' / DEIT_FILE).is_file()
    trained = load_checkpoint_safely(work_dir / 'iter_1.pth')['state_dict']
    # one step at the warm-up's first lr (1e-6) away from the served weights
    for key in ('patch_embed.proj.weight', 'blocks.3.attn.qkv.weight', 'blocks.0.mlp.fc2.bias'):
        torch.testing.assert_close(trained[f'backbone.{key}'], source.state_dict()[key],
                                   rtol=0, atol=1e-4)
