"""Absolute position encodings added to the tokens: learned, 2D sin-cos and none."""
from __future__ import annotations

import math

import torch
from mmengine.logging import print_log
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from mmsape.registry import POS_ENCODINGS

from .base import BasePositionEncoding, TokenGrid, split_prefix

_INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'area')


@POS_ENCODINGS.register_module()
class NoPositionEncoding(BasePositionEncoding):
    """No position encoding at all: every hook is the identity.

    The baseline that shows how much position a ViT recovers on its own (from
    zero padding in the patch embedding, or not at all).

    Examples:
        >>> import torch
        >>> pe = NoPositionEncoding(embed_dims=32, num_heads=2, num_layers=2)
        >>> x = torch.rand(2, 1 + 3 * 5, 32)
        >>> torch.equal(pe.encode_tokens(x, TokenGrid(3, 5, num_prefix=1)), x)
        True
    """


@POS_ENCODINGS.register_module()
class LearnedAPE(BasePositionEncoding):
    """Learned absolute position embedding (ViT / DeiT), resampled to every grid.

    The table holds one embedding per cell of ``base_grid``. A batch whose grid
    differs gets the table resampled to exactly its ``H x W`` (timm's
    :func:`~timm.layers.resample_abs_pos_embed`), so a 16x64 grid from a 32x32
    table is interpolated along each axis, not reused row-major as mmseg 1.2.2
    does whenever the token counts agree.

    Checkpoints trained at another grid load directly: a load-state-dict pre-hook
    resamples their table to ``base_grid``. The checkpoint grid comes from the
    state dict's metadata when it was saved by this class (so non-square grids
    round-trip), else it is inferred as square. A timm / DeiT style table that
    still holds the class-token slot, shape ``(1, P + N, C)``, is split: the
    slot goes to ``prefix_pos_embed`` (or is dropped, with a log line, when this
    module learns no prefix position). A table without prefix slots loaded with
    no ``prefix_pos_embed`` (timm's ``no_embed_class``) sets it to zero: the
    source added no position to its prefix tokens.

    Both resamplings (checkpoint table to ``base_grid`` at load, table to each
    batch's grid in :meth:`encode_tokens`) use ``interpolation`` and
    ``antialias``. To reproduce a source model's features at sizes other than its
    training size, use its setting:

    ==================  =================  =============
    checkpoint from     ``interpolation``  ``antialias``
    ==================  =================  =============
    timm, DeiT, mmsape  'bicubic'          True
    mmseg, mmpretrain   'bicubic'          False
    ==================  =================  =============

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads (unused, part of the common interface).
        num_layers (int): Backbone blocks (unused, part of the common interface).
        base_grid (tuple[int, int]): Grid ``(H0, W0)`` of the stored table.
        num_prefix_tokens (int): Class / register tokens in front of the grid.
        with_prefix_embed (bool): Also learn a position for each prefix token,
            like DeiT's ``pos_embed[:, :1]``. Defaults to True.
        interpolation (str): ``F.interpolate`` mode used to resample the table.
            Defaults to 'bicubic' (timm, mmseg, mmpretrain).
        antialias (bool): Resample with PyTorch's antialiased kernels ('bilinear'
            and 'bicubic' only). They low-pass filter when the table shrinks, and
            their bicubic is PIL's (a = -0.5) at every scale, where the plain one
            uses a = -0.75: the two settings differ whenever the grid changes.
            Defaults to True (timm); mmseg and mmpretrain resample with False.
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.

    Examples:
        >>> import torch
        >>> pe = LearnedAPE(embed_dims=32, num_heads=2, num_layers=2,
        ...                 base_grid=(4, 4), num_prefix_tokens=1)
        >>> x = torch.rand(2, 1 + 3 * 8, 32)  # a 3x8 grid from a 4x4 table
        >>> pe.encode_tokens(x, TokenGrid(3, 8, num_prefix=1)).shape
        torch.Size([2, 25, 32])
    """
    # Learned position tables are not decayed (DeiT, mmseg's ViT recipes).
    exclude_from_weight_decay = True

    # Key under which the saved state dict's metadata records the table's grid.
    _GRID_METADATA_KEY = 'pos_embed_grid'

    def __init__(self,
                 with_prefix_embed: bool = True,
                 interpolation: str = 'bicubic',
                 antialias: bool = True,
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f'interpolation={interpolation!r} is not supported; use one '
                             f'of {_INTERPOLATIONS} (bicubic matches timm and mmseg).')
        if antialias and interpolation not in ('bilinear', 'bicubic'):
            raise ValueError(f'antialias=True needs interpolation \'bilinear\' or '
                             f'\'bicubic\', got {interpolation!r}; set antialias=False.')
        if len(self.base_grid) != 2 or min(self.base_grid) < 1:
            raise ValueError(f'base_grid={self.base_grid} must be (H0, W0) with both >= 1; it '
                             f'is the patch grid of the configured img_size.')
        self.interpolation = interpolation
        self.antialias = antialias

        height, width = self.base_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, height * width, self.embed_dims))
        nn.init.trunc_normal_(self.pos_embed, std=.02)
        if with_prefix_embed and self.num_prefix_tokens > 0:
            self.prefix_pos_embed = nn.Parameter(
                torch.zeros(1, self.num_prefix_tokens, self.embed_dims))
            nn.init.trunc_normal_(self.prefix_pos_embed, std=.02)
        else:
            self.prefix_pos_embed = None

        self._register_state_dict_hook(self._record_grid_in_metadata)
        self._register_load_state_dict_pre_hook(self._resample_checkpoint_pos_embed)

    @property
    def with_prefix_embed(self) -> bool:
        return self.prefix_pos_embed is not None

    def resampled_pos_embed(self, hw: tuple[int, int]) -> Tensor:
        """The ``(1, H*W, C)`` table for an ``H x W`` grid (the table itself at ``base_grid``)."""
        return resample_abs_pos_embed(
            self.pos_embed,
            new_size=list(hw),
            old_size=list(self.base_grid),
            num_prefix_tokens=0,
            interpolation=self.interpolation,
            antialias=self.antialias)

    def encode_tokens(self, x: Tensor, grid: TokenGrid) -> Tensor:
        prefix, patches = split_prefix(x, grid)
        patches = patches + self.resampled_pos_embed(grid.hw).to(patches.dtype)
        if self.prefix_pos_embed is None:
            return torch.cat([prefix, patches], dim=1)
        if grid.num_prefix != self.num_prefix_tokens:
            raise ValueError(
                f'LearnedAPE learns positions for num_prefix_tokens={self.num_prefix_tokens} '
                f'prefix tokens but got {grid.num_prefix}; build it with the backbone\'s '
                f'prefix token count, or set with_prefix_embed=False.')
        prefix = prefix + self.prefix_pos_embed.to(prefix.dtype)
        return torch.cat([prefix, patches], dim=1)


    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, base_grid={self.base_grid}, '
                f'with_prefix_embed={self.with_prefix_embed}, '
                f'interpolation={self.interpolation!r}, antialias={self.antialias}')

    # --- checkpoint loading -------------------------------------------------

    def convert_checkpoint_keys(self, state: dict, prefix: str) -> list:
        """A ViT checkpoint's table (``pos_embed`` at the top level in timm, DeiT,
        mmpretrain, mmseg and the SaPE² authors' code) becomes this module's;
        its load hook then resamples it to ``base_grid``.

        Examples:
            >>> import torch
            >>> pe = LearnedAPE(embed_dims=8, num_heads=2, num_layers=2, base_grid=(2, 2))
            >>> state = {'pos_embed': torch.zeros(1, 5, 8), 'cls_token': torch.zeros(1, 1, 8)}
            >>> pe.convert_checkpoint_keys(state, 'pos_encoding.'), sorted(state)
            ([], ['cls_token', 'pos_encoding.pos_embed'])
        """
        if 'pos_embed' in state:
            state[prefix + 'pos_embed'] = state.pop('pos_embed')
        return []

    def resampled_on_load(self) -> set:
        return {'pos_embed'}

    def _record_grid_in_metadata(self, module: nn.Module, state_dict: dict, prefix: str,
                                 local_metadata: dict) -> None:
        # The token count alone cannot tell 16x64 from 32x32; the metadata travels
        # with the state dict (torch.save and mmengine checkpoints keep it).
        local_metadata[self._GRID_METADATA_KEY] = list(self.base_grid)

    def _checkpoint_layout(self, num_tokens: int,
                           saved_grid: list[int] | None) -> tuple[int, tuple[int, int]]:
        """Number of prefix slots and grid of a checkpoint table with ``num_tokens`` rows."""
        if saved_grid is not None:
            height, width = saved_grid
            return num_tokens - height * width, (height, width)
        # Candidates for the prefix slots the table may hold: none (this class, or
        # timm with no_embed_class), one (class token: ViT, DeiT), or this module's count.
        candidates = sorted({0, 1, self.num_prefix_tokens})
        for extra in candidates:
            if num_tokens - extra == self.base_grid[0] * self.base_grid[1]:
                return extra, self.base_grid
        for extra in candidates:
            side = math.isqrt(max(num_tokens - extra, 0))
            if side > 0 and side * side == num_tokens - extra:
                return extra, (side, side)
        raise ValueError(
            f'Cannot infer the grid of a checkpoint pos_embed with {num_tokens} tokens: it '
            f'is neither the base grid {self.base_grid} nor a square grid (with 0, 1 or '
            f'{self.num_prefix_tokens} prefix slots). Resample it to base_grid before loading.')

    def _resample_checkpoint_pos_embed(self, state_dict: dict, prefix: str, local_metadata: dict,
                                       strict: bool, missing_keys: list, unexpected_keys: list,
                                       error_msgs: list) -> None:
        key = prefix + 'pos_embed'
        if key not in state_dict:
            return
        ckpt_embed = state_dict[key]
        if ckpt_embed.dim() != 3 or ckpt_embed.shape[0] != 1:
            # Let load_state_dict report the shape mismatch.
            return
        num_extra, ckpt_grid = self._checkpoint_layout(
            ckpt_embed.shape[1], local_metadata.get(self._GRID_METADATA_KEY))

        prefix_key = prefix + 'prefix_pos_embed'
        if num_extra == 0 and self.prefix_pos_embed is not None and prefix_key not in state_dict:
            state_dict[prefix_key] = torch.zeros_like(self.prefix_pos_embed).detach()
            print_log(f'Set prefix_pos_embed to zero: the checkpoint pos_embed '
                      f'{tuple(ckpt_embed.shape)} has no prefix slot and there is no '
                      f'prefix_pos_embed, so its model added no position to prefix tokens.',
                      logger='current')
        if num_extra == 0 and tuple(ckpt_grid) == self.base_grid:
            return

        prefix_slots, grid_embed = ckpt_embed[:, :num_extra], ckpt_embed[:, num_extra:]
        if num_extra:
            if self.prefix_pos_embed is None:
                print_log(f'Dropped the {num_extra} prefix slot(s) of the checkpoint pos_embed '
                          f'{tuple(ckpt_embed.shape)}: this LearnedAPE learns no prefix '
                          f'position (with_prefix_embed=False or no prefix tokens).',
                          logger='current')
            elif num_extra == self.num_prefix_tokens and prefix_key not in state_dict:
                state_dict[prefix_key] = prefix_slots
                print_log(f'Moved the {num_extra} prefix slot(s) of the checkpoint pos_embed '
                          f'{tuple(ckpt_embed.shape)} to prefix_pos_embed.', logger='current')
            else:
                # Either the counts differ (e.g. class + register tokens here, class
                # only there) or the checkpoint already has its own prefix table.
                print_log(f'Ignored the {num_extra} prefix slot(s) of the checkpoint pos_embed '
                          f'{tuple(ckpt_embed.shape)}: this LearnedAPE has '
                          f'{self.num_prefix_tokens} prefix tokens and the checkpoint '
                          f'{"has" if prefix_key in state_dict else "lacks"} prefix_pos_embed.',
                          logger='current')

        if tuple(ckpt_grid) != self.base_grid:
            grid_embed = resample_abs_pos_embed(
                grid_embed,
                new_size=list(self.base_grid),
                old_size=list(ckpt_grid),
                num_prefix_tokens=0,
                interpolation=self.interpolation,
                antialias=self.antialias)
            print_log(f'Resized position embedding {key} from grid {ckpt_grid[0]}x{ckpt_grid[1]} '
                      f'{tuple(ckpt_embed.shape)} to grid {self.base_grid[0]}x{self.base_grid[1]} '
                      f'{tuple(grid_embed.shape)} ({self.interpolation}, '
                      f'antialias={self.antialias}).', logger='current')
        state_dict[key] = grid_embed


@POS_ENCODINGS.register_module()
class SinCos2DPositionEncoding(BasePositionEncoding):
    """Fixed 2D sin-cos absolute position embedding (MAE, MoCo v3), for any grid.

    Channels are split in four equal parts: ``sin(x w), cos(x w), sin(y w),
    cos(y w)`` with ``x`` the column and ``y`` the row of a patch (0-based) and
    ``w_k = 1 / temperature ** (k / (C / 4))``, the layout of MAE's
    ``get_2d_sincos_pos_embed`` and mmpretrain's
    ``build_2d_sincos_position_embedding``. The embedding is computed for the
    actual ``H x W`` of each batch, so nothing is resampled. Prefix tokens get
    no position (zero).

    Note: for square grids mmpretrain's helper builds the same table with rows
    and columns swapped (its ``meshgrid`` runs over ``(w, h)``); that is a
    relabelling of the axes, not a different encoding, but it is wrong for
    non-square grids, so this class follows MAE's row-major layout.

    Args:
        embed_dims (int): Token width C, divisible by 4.
        num_heads (int): Attention heads (unused, part of the common interface).
        num_layers (int): Backbone blocks (unused, part of the common interface).
        base_grid (tuple[int, int]): Unused: the embedding has no table.
        num_prefix_tokens (int): Class / register tokens in front of the grid.
        temperature (float): Frequency base. Defaults to 10000.
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.

    Examples:
        >>> import torch
        >>> pe = SinCos2DPositionEncoding(embed_dims=32, num_heads=2, num_layers=2)
        >>> x = torch.zeros(1, 1 + 3 * 5, 32)
        >>> out = pe.encode_tokens(x, TokenGrid(3, 5, num_prefix=1))
        >>> out[0, 0].abs().sum().item(), out.shape
        (0.0, torch.Size([1, 16, 32]))
    """

    def __init__(self,
                 temperature: float = 10000.,
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        if self.embed_dims % 4:
            raise ValueError(f'SinCos2DPositionEncoding splits embed_dims in 4 (sin/cos of x '
                             f'and y), but embed_dims={self.embed_dims} is not divisible by 4; '
                             f'use a multiple of 4.')
        if temperature <= 0:
            raise ValueError(f'temperature={temperature} must be > 0 (10000 is the usual).')
        self.temperature = float(temperature)

    def sincos_embed(self, hw: tuple[int, int], device=None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """The ``(1, H*W, C)`` embedding of an ``H x W`` grid in row-major order."""
        height, width = hw
        quarter = self.embed_dims // 4
        # float32 (at least) for the angles: positions times frequencies lose
        # too much in half precision.
        compute_dtype = torch.promote_types(dtype, torch.float32)
        omega = torch.arange(quarter, device=device, dtype=compute_dtype) / quarter
        omega = 1. / self.temperature**omega
        rows, cols = torch.meshgrid(
            torch.arange(height, device=device, dtype=compute_dtype),
            torch.arange(width, device=device, dtype=compute_dtype),
            indexing='ij')
        angle_x = cols.reshape(-1, 1) * omega
        angle_y = rows.reshape(-1, 1) * omega
        embed = torch.cat(
            [angle_x.sin(), angle_x.cos(), angle_y.sin(), angle_y.cos()], dim=1)
        return embed.unsqueeze(0).to(dtype)

    def encode_tokens(self, x: Tensor, grid: TokenGrid) -> Tensor:
        prefix, patches = split_prefix(x, grid)
        patches = patches + self.sincos_embed(grid.hw, device=x.device, dtype=x.dtype)
        return torch.cat([prefix, patches], dim=1)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, temperature={self.temperature}'


__all__ = ['LearnedAPE', 'NoPositionEncoding', 'SinCos2DPositionEncoding']
