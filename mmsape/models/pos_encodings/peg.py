"""CPVT's Position Encoding Generator (PEG): a depthwise conv between blocks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmsape.registry import POS_ENCODINGS

from .base import (
    BasePositionEncoding,
    TokenGrid,
    grid_to_map,
    layers_from_option,
    map_to_grid,
    split_prefix,
)


@POS_ENCODINGS.register_module()
class PEG(BasePositionEncoding):
    """Conditional position encoding of CPVT (Chu et al., arXiv 2102.10882).

    After each listed block, the patch tokens are laid out as an ``H x W`` map
    and a depthwise ``k x k`` conv (zero padding ``(k - 1) // 2``, with bias) is
    added residually: ``x <- x + DWConv(x)``. The zero padding at the border is
    what tells a token where it is. Prefix tokens pass through untouched. Being
    a conv, it works on any grid.

    Padded batches (detection, or a grid padded to a multiple of the attention
    window) give ``grid.pad_mask``. With ``mask_padding=True`` padded cells are
    zeroed before the conv, so the conv sees the image border where the image
    ends, and they keep their input values afterwards (CPVT's detection variant).

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads (unused, part of the common interface).
        num_layers (int): Backbone blocks.
        base_grid (tuple[int, int]): Unused: a conv has no table.
        num_prefix_tokens (int): Class / register tokens in front of the grid.
        kernel_size (int): Odd conv kernel size. Defaults to 3 (CPVT).
        after_blocks (Sequence[int]): Blocks followed by a PEG, one conv each;
            negatives count from the end. Defaults to ``(0,)`` (CPVT's single
            PEG after the first block); ``(0, 1, 2, 3, 4)`` is the paper's
            stronger "0-5" variant.
        mask_padding (bool): Keep padded cells out of the conv, see above.
            Defaults to True.
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.

    Examples:
        >>> import torch
        >>> peg = PEG(embed_dims=32, num_heads=2, num_layers=4, after_blocks=(0, 1))
        >>> x = torch.rand(2, 1 + 3 * 5, 32)
        >>> peg.after_block(0, x, TokenGrid(3, 5, num_prefix=1)).shape
        torch.Size([2, 16, 32])
        >>> torch.equal(peg.after_block(2, x, TokenGrid(3, 5, num_prefix=1)), x)
        True
    """
    # CPVT trains the PEG without weight decay; convs.<block> runs as that block's tail.
    exclude_from_weight_decay = True
    per_block_attr = 'convs'

    def __init__(self,
                 kernel_size: int = 3,
                 after_blocks: Sequence[int] = (0, ),
                 mask_padding: bool = True,
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size={kernel_size} must be a positive odd number so '
                             f'that the conv keeps the grid size (CPVT uses 3).')
        if isinstance(after_blocks, int):
            after_blocks = (after_blocks, )
        self.after_blocks = layers_from_option(after_blocks, self.num_layers, name='after_blocks')
        if not self.after_blocks:
            raise ValueError('after_blocks is empty, so PEG would encode nothing; list at '
                             'least one block, e.g. after_blocks=(0,).')
        self.kernel_size = kernel_size
        self.mask_padding = mask_padding
        # Keyed by block index so that parameter names say where each conv acts.
        self.convs = nn.ModuleDict({
            str(block): nn.Conv2d(
                self.embed_dims,
                self.embed_dims,
                kernel_size,
                padding=(kernel_size - 1) // 2,
                groups=self.embed_dims,
                bias=True)
            for block in self.after_blocks
        })

    def after_block(self, block_index: int, x: Tensor, grid: TokenGrid) -> Tensor:
        key = str(block_index)
        if key not in self.convs:
            return x
        prefix, patches = split_prefix(x, grid)
        feature_map = grid_to_map(patches, grid)
        pad_mask = grid.pad_mask if self.mask_padding else None
        if pad_mask is not None:
            # (B, 1, H, W): broadcast over channels.
            pad_mask = pad_mask.unsqueeze(1).to(torch.bool)
            feature_map = feature_map.masked_fill(pad_mask, 0.)
        encoded = feature_map + self.convs[key](feature_map)
        if pad_mask is not None:
            encoded = torch.where(pad_mask, grid_to_map(patches, grid), encoded)
        return torch.cat([prefix, map_to_grid(encoded)], dim=1)



    def check_compatible(self, *, window_size: int, with_cls_token: bool) -> None:
        if window_size > 0 and not self.mask_padding:
            raise ValueError(
                'PEG with window attention needs mask_padding=True: the backbone pads the '
                'grid to a multiple of the window, and without the mask the conv would read '
                'the padding as image. Set mask_padding=True (or disable window attention).')

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, kernel_size={self.kernel_size}, '
                f'after_blocks={self.after_blocks}, mask_padding={self.mask_padding}')


__all__ = ['PEG']
