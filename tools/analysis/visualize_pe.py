"""Heat maps of a position encoding for one patch, overlaid on a test image.

Panels (whichever apply to the model's encoding), for the patch at grid cell
``--patch ROW COL`` and block ``--layer``:

* the SaPE² bias ``b_in`` for that query patch over all patches (paper Fig. 4);
* the attention of that patch (any encoding, computed by the encoding itself);
* cosine similarity of the block's output feature at the patch vs all patches,
  on the image and on a blank (mean-colour) image, where only position differs;
* cosine similarity of the position embedding (APE / sin-cos) or of the RoPE
  rotation, patch vs all.

The image is the ``--index``-th of the config's test dataloader, through the
model's data preprocessor. Writes ``<out-dir>/pe_maps_<name>.png``.

Example::

    python tools/analysis/visualize_pe.py \\
        configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py \\
        work_dirs/demo/seg/iter_300.pth --patch 5 10 --layer 2
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Tuple

import numpy as np
import torch
from mmengine.config import DictAction
from torch import Tensor

from mmsape.analysis.equivariance import find_backbone, load_model
from mmsape.analysis.pe_maps import (
    attention_map,
    embedding_similarity,
    feature_similarity,
    find_encoding,
    sape2_bias_map,
    token_grid,
)
from mmsape.models.pos_encodings.sape2 import SaPE2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Position-encoding heat maps (SaPE2 bias, attention, similarity) for '
        'one patch, overlaid on a test image.')
    parser.add_argument('config', help='model config')
    parser.add_argument('checkpoint', help='checkpoint ("none": the initialisation)')
    parser.add_argument('--index', type=int, default=0, help='test image index')
    parser.add_argument('--patch', type=int, nargs=2, default=None, metavar=('ROW', 'COL'),
                        help='grid cell of the query patch; default: the centre')
    parser.add_argument('--layer', type=int, default=0, help='block to visualise')
    parser.add_argument('--out-dir', default='work_dirs/pe_maps', help='output folder')
    parser.add_argument('--name', default=None, help='file name suffix; default: config name')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args(argv)


def test_image(model, loader, index: int) -> Tuple[Tensor, np.ndarray]:
    """The normalised input ``(1, C, H, W)`` and its displayable ``(H, W, 3)`` uint8."""
    for i, data in enumerate(loader.dataset):
        if i == index:
            batch = model.data_preprocessor(
                dict(inputs=[data['inputs']], data_samples=[data['data_samples']]), False)
            inputs = batch['inputs'][:1]
            break
    else:
        raise IndexError(f'--index {index} is beyond the {len(loader.dataset)} test images.')
    pre = model.data_preprocessor
    mean = getattr(pre, 'mean', torch.zeros(1, 1, 1)).reshape(-1, 1, 1)
    std = getattr(pre, 'std', torch.ones(1, 1, 1)).reshape(-1, 1, 1)
    image = (inputs[0] * std + mean).clamp(0, 255).permute(1, 2, 0).byte().numpy()
    return inputs, image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)


def draw(panels: List[Tuple[str, np.ndarray]], image: np.ndarray, patch: Tuple[int, int],
         patch_size: int, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.6 * (len(panels) + 1), 3.4))
    axes[0].imshow(image)
    axes[0].set_title('input', fontsize=8)
    for ax, (name, heat) in zip(axes[1:], panels):
        ax.imshow(image)
        # Nearest upsampling: one colour per patch, aligned with the patches.
        up = np.kron(heat, np.ones((patch_size, patch_size)))[:image.shape[0], :image.shape[1]]
        shown = ax.imshow(up, cmap='jet', alpha=0.55,
                          extent=(-0.5, up.shape[1] - 0.5, up.shape[0] - 0.5, -0.5))
        fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.add_patch(Rectangle((patch[1] * patch_size - 0.5, patch[0] * patch_size - 0.5),
                               patch_size, patch_size, fill=False, color='white', lw=1.5))
        ax.axis('off')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(2)
    ckpt = None if args.checkpoint.lower() == 'none' else args.checkpoint
    model, loader = load_model(args.config, ckpt, args.cfg_options)
    backbone = find_backbone(model)
    inputs, image = test_image(model, loader, args.index)
    grid = token_grid(backbone, inputs)
    patch = tuple(args.patch) if args.patch else (grid.height // 2, grid.width // 2)
    layer = args.layer
    panels = []
    if find_encoding(backbone, SaPE2) is not None and layer in find_encoding(backbone,
                                                                             SaPE2).layers:
        panels.append((f'SaPE2 bias b_in, block {layer}',
                       sape2_bias_map(backbone, inputs, layer, patch)[0].numpy()))
    panels.append((f'attention, block {layer}',
                   attention_map(backbone, inputs, layer, patch)[0].numpy()))
    panels.append((f'feature cos, block {layer}',
                   feature_similarity(backbone, inputs, layer, patch)[0].numpy()))
    blank = torch.zeros_like(inputs)  # the normalised mean colour
    panels.append((f'feature cos, blank image, block {layer}',
                   feature_similarity(backbone, blank, layer, patch)[0].numpy()))
    try:
        name, sim = embedding_similarity(backbone, grid.hw, patch, layer)
        panels.append((f'{name} embedding cos', sim[0].numpy()))
    except ValueError:
        pass  # no token-additive / rotary embedding to show
    os.makedirs(args.out_dir, exist_ok=True)
    name = args.name or osp.splitext(osp.basename(args.config))[0]
    path = osp.join(args.out_dir, f'pe_maps_{name}.png')
    draw(panels, image, patch, backbone.patch_size, path,
         f'{name}: patch {patch} of a {grid.height}x{grid.width} grid')
    print(f'wrote {path} ({", ".join(p[0] for p in panels)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
