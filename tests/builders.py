"""What several test files build: tiny ViTs, the command-line tools as modules,
short runs of the demo configs, and the checks of the pictures they draw.

Test files are imported with ``--import-mode=importlib`` and cannot import each
other; ``setup.cfg`` puts ``tests/`` on pytest's ``pythonpath`` so that they
import this module as ``builders``.
"""
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple, Union

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmsape.models import PosEncViT
from mmsape.ops.sape2 import compiled_kernels_required, load_cpu_kernel, rounding_floor
from mmsape.utils.config_entries import find_entry_index

ROOT = Path(__file__).resolve().parents[1]
#: task -> its demo config (the configs/demo/ files the end-to-end tests train)
DEMO_CONFIGS = {
    'cls': 'configs/demo/vit-96d4-p8-sape2_1xb8-300iter_demo-imagenet.py',
    'seg': 'configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py',
    'det': 'configs/demo/mask-rcnn_vit-96d4-p8-sape2_simplefpn_1xb4-800iter_demo-coco.py',
}
#: task -> the metric its demo config's evaluator reports first
DEMO_METRICS = {'cls': 'accuracy/top1', 'seg': 'mIoU', 'det': 'coco/bbox_mAP'}
#: The default arch of :func:`tiny_vit`.
TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)


def pos_encoding_cfg(encoding: Union[str, dict, list]) -> Union[dict, list]:
    """``'SaPE2'`` -> ``dict(type='SaPE2')``; ``'LearnedAPE+SaPE2'`` -> a stack
    (a list of configs); configs pass through."""
    if not isinstance(encoding, str):
        return encoding
    if '+' in encoding:
        return [dict(type=part) for part in encoding.split('+')]
    return dict(type=encoding)



def padded_and_alone(model: torch.nn.Module, dtype: torch.dtype = torch.float32
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(from the batch, alone)``: a ViT's outputs for a random 24 x 40 image
    given alone and at the top left of a 40 x 56 batch whose other pixels are
    padding (``pad_mask``), cut to the image's 3 x 5 patches of 8 pixels (and
    the class token, for ``out_type='raw'``). An encoding that ignores batch
    padding gives the same values."""
    image = torch.randn(1, 3, 24, 40, dtype=dtype)
    batch = torch.zeros(1, 3, 40, 56, dtype=dtype)
    batch[..., :24, :40] = image
    pad_mask = torch.ones(1, 40, 56, dtype=torch.bool)
    pad_mask[..., :24, :40] = False
    with torch.no_grad():
        alone, padded = model(image)[0], model(batch, pad_mask)[0]
    if model.out_type == 'raw':  # (1, 1 + 5 * 7, C): class token + the 3 x 5 image
        image_tokens = padded[:, 1:].view(1, 5, 7, -1)[:, :3, :5].flatten(1, 2)
        return torch.cat([padded[:, :1], image_tokens], dim=1), alone
    return padded[..., :3, :5], alone

def tiny_vit(pos_encoding: Union[str, dict, list] = 'LearnedAPE',
             *,
             embed_dims: int = 32,
             num_layers: int = 2,
             num_heads: int = 4,
             img_size=32,
             patch_size: int = 8,
             arch: Union[str, dict, None] = None,
             seed: Union[int, None] = None,
             train: bool = False,
             **kwargs) -> PosEncViT:
    """A :class:`PosEncViT` of ``embed_dims`` channels (MLP ratio 2), in eval
    mode unless ``train``.

    Args:
        pos_encoding: a config, a type name or ``'A+B'`` for a stack
            (:func:`pos_encoding_cfg`).
        arch: instead of ``embed_dims``, ``num_layers`` and ``num_heads``.
        seed: ``torch.manual_seed`` before building; None leaves the RNG alone.
        **kwargs: any other ``PosEncViT`` option.
    """
    if seed is not None:
        torch.manual_seed(seed)
    if arch is None:
        arch = dict(embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads,
                    feedforward_channels=2 * embed_dims)
    model = PosEncViT(arch=arch, img_size=img_size, patch_size=patch_size,
                      pos_encoding=pos_encoding_cfg(pos_encoding), **kwargs)
    return model.train(train)


def kernel_factors(query_factors: list, key_factors: list, root: bool) -> tuple:
    """The factors and floors an exact SaPE² kernel takes for per-axis factors, as
    ``SaPE2`` passes them: the axes with their rounding floors for distances
    (``root``), else the axes concatenated into one, without floors."""
    if root:
        return (query_factors, key_factors,
                torch.cat([rounding_floor(f)[..., 0] for f in key_factors], dim=-1))
    return [torch.cat(query_factors, -1)], [torch.cat(key_factors, -1)], None


def kernel_that_ran(out: torch.Tensor) -> str:
    """The name of the ``torch.ops.mmsape`` operator whose autograd node made ``out``
    (``'sape2_attention_cpu'``, ``'sape2_attention_python'``, ...)."""
    prefix, suffix = 'GeneratedBackwardFor_mmsape_', '_defaultBackward'
    name = out.grad_fn.name()
    assert name.startswith(prefix) and name.endswith(suffix), name
    return name[len(prefix):-len(suffix)]


def require_cpu_kernel():
    """The compiled SaPE² CPU kernel; the test is skipped where it cannot be built
    (no C++ compiler), and fails instead with ``MMSAPE_REQUIRE_COMPILED_KERNELS=1``
    (CI), so that the tests comparing kernels never pass by skipping them.
    Call it with ``MMSAPE_SAPE2_CPU_KERNEL`` unset or ``1``."""
    kernel = load_cpu_kernel()  # raises with the switch set, if the build failed
    if kernel is None:
        message = 'the compiled SaPE2 CPU kernel is not available here'
        if compiled_kernels_required():
            pytest.fail(f'{message}, and MMSAPE_REQUIRE_COMPILED_KERNELS=1 requires it')
        pytest.skip(message)
    return kernel


def copy_checkout(destination: Path, untracked: bool = False) -> Path:
    """The repository's git-tracked files (and, if ``untracked``, the untracked
    ones git does not ignore) as they are in the working tree, copied to
    ``destination``: what a clean checkout of the working tree holds."""
    command = ['git', 'ls-files', '-z'] + (['-co', '--exclude-standard'] if untracked else [])
    names = subprocess.run(command, cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split('\0')
    for name in filter(None, names):
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is not
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def build_wheel(source: Path, dist: Path) -> Path:
    """The wheel of the checkout at ``source`` (no dependencies, no build
    isolation: the environment's setuptools), written to ``dist``."""
    subprocess.run([sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q', 'wheel',
                    '--no-deps', '--no-build-isolation', '--no-index', '-w', str(dist),
                    str(source)], check=True, capture_output=True)
    wheel, = dist.glob('mmsape-*.whl')
    return wheel


def install_wheel(wheel: Path, site: Path) -> Path:
    """``wheel`` installed into the folder ``site`` (to put on PYTHONPATH)."""
    subprocess.run([sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q',
                    'install', '--no-deps', '--no-index', '--target', str(site), str(wheel)],
                   check=True, capture_output=True)
    return site


def load_tool(name: str) -> ModuleType:
    """``tools/analysis/<name>.py`` as a module (see :func:`load_script`)."""
    return load_script(f'tools/analysis/{name}.py')


def load_script(path: str) -> ModuleType:
    """The script at ``path`` (relative to the repository) as a module,
    registered in ``sys.modules`` under its file name as an import would."""
    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def short_run(config: str, iters: int, checkpoint_every: int) -> list:
    """--cfg-options that shorten a demo config to ``iters`` iterations: the
    warm-up (the config's LinearLR, found by type) to 2 iterations, the
    schedulers that started after it to start after 2, those that ended with
    training to end at ``iters``."""
    cfg = Config.fromfile(ROOT / config)
    warmup = find_entry_index(cfg.param_scheduler, 'LinearLR')
    options = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
               f'default_hooks.checkpoint.interval={checkpoint_every}',
               'default_hooks.logger.interval=1', f'param_scheduler.{warmup}.end=2']
    for index, scheduler in enumerate(cfg.param_scheduler):
        if scheduler.get('begin') == cfg.param_scheduler[warmup].end:
            options.append(f'param_scheduler.{index}.begin=2')
        if scheduler.get('end') == cfg.train_cfg.max_iters:
            options.append(f'param_scheduler.{index}.end={iters}')
    return options


def run_tool(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root; fails the test with its output
    unless it succeeds."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, env=env)
    assert result.returncode == 0, (result.stdout[-4000:] + '\n' + result.stderr[-6000:])
    return result


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def open_picture(path: Union[str, Path], size: Optional[Tuple[int, int]] = None,
                 png: bool = True) -> np.ndarray:
    """The RGB pixels of a picture, asserting it is a PNG (unless ``png`` is
    False) that decodes to ``size`` = (width, height) when given."""
    path = Path(path)
    assert path.is_file(), f'{path} was not written'
    if png:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f'{path} is not a PNG file'
    image = mmcv.imread(str(path), channel_order='rgb')
    assert image is not None and image.ndim == 3, f'{path} does not decode to a colour image'
    if size is not None:
        assert (image.shape[1], image.shape[0]) == tuple(size), (
            f'{path} is {image.shape[1]}x{image.shape[0]}, expected {size[0]}x{size[1]}')
    return image


def readme_commands(section: str) -> Tuple[Dict[str, str], List[List[str]]]:
    """The shell commands of README.md's section ``section`` (a heading's text):
    ``({variable: value}, [argv, ...])`` from its ``bash`` blocks, continuation
    lines joined, comments dropped, lines ``NAME=value`` alone as variables."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    match = re.search(rf'^#{{2,6}} {re.escape(section)}\n(.*?)(?=^#{{2,6}} )', text, re.M | re.S)
    assert match, f'README.md has no section {section!r}'
    variables, commands = {}, []
    for block in re.findall(r'```bash\n(.*?)```', match[1], re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split(' #')[0].strip()
            if not line or line.startswith('#'):
                continue
            words = shlex.split(line)
            if len(words) == 1 and re.fullmatch(r'[A-Z_]+=\S+', words[0]):
                name, value = words[0].split('=', 1)
                variables[name] = value
            else:
                commands.append(words)
    return variables, commands


def readme_command(section: str, script: str, **values: str) -> List[str]:
    """The README section's command that runs ``script`` (``'tools/train.py'``),
    its ``$VARIABLES`` replaced by ``values``, ``python`` by this interpreter."""
    _, commands = readme_commands(section)
    matching = [words for words in commands if script in words]
    assert len(matching) == 1, f'{section!r} has {len(matching)} commands running {script}'
    words = [re.sub(r'\$(\w+)', lambda m: values[m[1]], word) for word in matching[0]]
    return [sys.executable if word == 'python' else word for word in words]
