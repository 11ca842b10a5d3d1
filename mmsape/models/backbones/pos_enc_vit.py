"""One Vision Transformer whose position encoding is a config dict.

Every encoding (learned APE, 2D sin-cos, PEG, 2D RoPE, CoPE, SaPE², none, or a
stack of them) plugs into the same body through the three hooks of
:class:`~mmsape.models.pos_encodings.BasePositionEncoding`, so comparisons between
encodings change nothing else. The body matches timm's ``VisionTransformer``
(same module names, pre-norm blocks, LayerScale, DropPath), which lets timm /
DeiT checkpoints load with little key conversion.
"""
import math
from functools import partial
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule, ModuleList
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, trunc_normal_
from torch import Tensor, nn

from mmsape.models.pos_encodings import TokenGrid, build_pos_encoding
from mmsape.models.pos_encodings.base import grid_to_map, layers_from_option
from mmsape.models.utils.vit_pretrained import convert_vit_state_dict, format_load_report
from mmsape.registry import MODELS

#: ``attend(q, k, v, grid, dropout_p, tokens) -> out``, one layer's attention as
#: the position encoding computes it; ``tokens`` are the ``(B, N, C)`` tokens
#: the attention reads (the input of its qkv projection).
AttendFn = Callable[..., Tensor]


class PosEncAttention(nn.Module):
    """Multi-head self-attention whose logits/softmax are computed by ``attend``.

    Args:
        embed_dims (int): Token width.
        num_heads (int): Attention heads.
        qkv_bias (bool): Bias in the qkv projection. Defaults to True.
        attn_drop (float): Dropout on attention weights. Defaults to 0.
        proj_drop (float): Dropout after the output projection. Defaults to 0.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, grid: TokenGrid, attend: AttendFn) -> Tensor:
        batch, num_tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # The encoding also gets the tokens themselves: content-dependent
        # position terms (PaPE's curvatures) are computed from them.
        x = attend(q, k, v, grid, dropout_p=self.attn_drop if self.training else 0.,
                   tokens=x)
        x = x.transpose(1, 2).reshape(batch, num_tokens, channels)
        return self.proj_drop(self.proj(x))


class PosEncBlock(nn.Module):
    """Pre-norm transformer block; optionally attends inside windows (ViTDet).

    Args:
        embed_dims (int): Token width.
        num_heads (int): Attention heads.
        feedforward_channels (int): Hidden width of the MLP.
        window_size (int): Side of the square attention windows; 0 = global.
        qkv_bias (bool): Bias in the qkv projection.
        drop_rate (float): Dropout after projections.
        attn_drop_rate (float): Dropout on attention weights.
        drop_path_rate (float): Stochastic depth rate of this block.
        layer_scale_init_value (float): LayerScale init; 0 disables LayerScale.
        norm_eps (float): LayerNorm epsilon.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 feedforward_channels: int,
                 window_size: int = 0,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 0.,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.attn = PosEncAttention(embed_dims, num_heads, qkv_bias, attn_drop_rate, drop_rate)
        self.ls1 = (LayerScale(embed_dims, layer_scale_init_value)
                    if layer_scale_init_value > 0 else nn.Identity())
        self.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.mlp = Mlp(embed_dims, feedforward_channels, act_layer=nn.GELU, drop=drop_rate)
        self.ls2 = (LayerScale(embed_dims, layer_scale_init_value)
                    if layer_scale_init_value > 0 else nn.Identity())
        self.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: Tensor, grid: TokenGrid, attend: AttendFn) -> Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            windows, window_grid, padded_hw = partition_windows(y, grid, self.window_size)
            y = merge_windows(self.attn(windows, window_grid, attend), grid, padded_hw,
                              self.window_size)
        else:
            y = self.attn(y, grid, attend)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def partition_windows(x: Tensor, grid: TokenGrid,
                      window_size: int) -> Tuple[Tensor, TokenGrid, Tuple[int, int]]:
    """Split ``(B, H*W, C)`` grid tokens into ``(B*nW, ws*ws, C)`` windows.

    The grid is zero-padded bottom/right to a multiple of ``window_size`` (as
    ViTDet does); the returned window grid's ``pad_mask`` marks those cells (and
    any batch padding), so encodings that care (PEG) can tell them from image.
    """
    batch, _, channels = x.shape
    height, width = grid.hw
    pad_h, pad_w = (-height) % window_size, (-width) % window_size
    x = F.pad(x.reshape(batch, height, width, channels), (0, 0, 0, pad_w, 0, pad_h))
    padded_hw = (height + pad_h, width + pad_w)
    windows = _to_windows(x, window_size)
    if pad_h or pad_w or grid.pad_mask is not None:
        pad_mask = (grid.pad_mask if grid.pad_mask is not None else
                    x.new_zeros(batch, height, width, dtype=torch.bool))
        pad_mask = F.pad(pad_mask, (0, pad_w, 0, pad_h), value=True)
        window_mask = _to_windows(pad_mask[..., None], window_size)[..., 0]
        window_mask = window_mask.reshape(-1, window_size, window_size)
    else:
        window_mask = None
    return windows, TokenGrid(window_size, window_size, 0, window_mask), padded_hw


def _to_windows(x: Tensor, window_size: int) -> Tensor:
    """``(B, Hp, Wp, C)`` -> ``(B*nW, ws*ws, C)``."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window_size, window_size, width // window_size,
                  window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def merge_windows(windows: Tensor, grid: TokenGrid, padded_hw: Tuple[int, int],
                  window_size: int) -> Tensor:
    """Inverse of :func:`partition_windows`: back to ``(B, H*W, C)``, padding cropped."""
    padded_h, padded_w = padded_hw
    channels = windows.shape[-1]
    rows, cols = padded_h // window_size, padded_w // window_size
    x = windows.reshape(-1, rows, cols, window_size, window_size, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, padded_h, padded_w, channels)
    x = x[:, :grid.height, :grid.width]
    return x.reshape(x.shape[0], grid.num_patches, channels)


@MODELS.register_module()
class PosEncViT(BaseModule):
    """Vision Transformer with a pluggable, registered position encoding.

    One body for classification (mmpretrain), detection (mmdet) and segmentation
    (mmseg): inputs of any size are padded bottom/right to a multiple of the patch
    size, and the position encoding (``pos_encoding``) sees the actual H x W grid
    of every batch.

    Args:
        arch (str | dict): A key of :attr:`arch_zoo` ('deit-tiny',
            'deit-small', 'deit-base', or mmpretrain's 'base', 'large') or a dict
            with ``embed_dims``, ``num_layers``, ``num_heads`` and
            ``feedforward_channels``. There is no 'small': mmpretrain's
            ``VisionTransformer`` uses it for a 768-channel, 8-block network,
            timm for DeiT-S. Defaults to 'deit-small'.
        img_size (int | tuple[int, int]): Training image size; sets the base grid
            of tables stored per grid cell (learned APE). Any size is accepted
            at run time. Defaults to 224.
        patch_size (int): Patch side. Defaults to 16.
        in_channels (int): Input channels. Defaults to 3.
        pos_encoding (dict | list[dict]): Position encoding config, e.g.
            ``dict(type='SaPE2')``; a list stacks several, e.g.
            ``[dict(type='LearnedAPE'), dict(type='SaPE2')]`` (SaPE² + APE).
            Defaults to ``dict(type='LearnedAPE')``.
        with_cls_token (bool): Prepend a class token. Defaults to True.
        num_register_tokens (int): Extra learned prefix tokens. Defaults to 0.
        out_type (str): 'raw' (all tokens, ``(B, P+N, C)``), 'cls_token'
            (``(B, C)``), 'featmap' (``(B, C, H, W)``, for dense heads) or
            'avg_featmap' (mean over image tokens, ``(B, C)``; CPVT-GAP).
            Defaults to 'cls_token'.
        out_indices (int | Sequence[int]): Blocks whose outputs are returned;
            negatives count from the end. Defaults to -1.
        window_size (int): ViTDet window attention side for the blocks not in
            ``global_attn_indexes``; 0 disables it. Defaults to 0.
        global_attn_indexes (Sequence[int]): Blocks that attend globally when
            ``window_size > 0``. Defaults to ().
        qkv_bias (bool): Bias in qkv projections. Defaults to True.
        drop_rate (float): Dropout after the position encoding and projections.
        attn_drop_rate (float): Dropout on attention weights.
        drop_path_rate (float): Stochastic depth, linearly increasing per block.
        layer_scale_init_value (float): LayerScale init; 0 disables it.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-6 (timm, DeiT).
        final_norm (bool): LayerNorm after the last block. Defaults to True.
        frozen_stages (int): Freeze the patch embedding, prefix tokens, token-level
            position encoding and the first ``frozen_stages`` blocks; -1 freezes
            nothing. Defaults to -1.
        with_cp (bool): Activation checkpointing per block. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialisation. MMEngine's
            ``Pretrained`` loads timm / DeiT / mmpretrain / mmseg ViT weights as
            they are: a load-state-dict pre-hook converts their keys, so does
            ``load_from`` of a whole detector or segmentor (see
            :mod:`mmsape.models.utils.vit_pretrained`); ``load_report`` then holds
            the last load's missing, unexpected, resized and filled keys. To
            reproduce an mmseg or mmpretrain model at other input sizes, build its
            ``LearnedAPE`` with ``antialias=False``.

    Examples:
        >>> import torch
        >>> from mmsape.models import PosEncViT
        >>> model = PosEncViT(arch=dict(embed_dims=64, num_layers=4, num_heads=4,
        ...                             feedforward_channels=128),
        ...                   pos_encoding=dict(type='SaPE2'), out_type='featmap',
        ...                   out_indices=(1, 3))
        >>> outs = model(torch.rand(2, 3, 70, 100))  # pads to 80 x 112
        >>> [tuple(out.shape) for out in outs]
        [(2, 64, 5, 7), (2, 64, 5, 7)]
    """

    #: Only names that mean one network: DeiT's, and mmpretrain's where its
    #: ``VisionTransformer.arch_zoo`` has the same network under the name.
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['deit-t', 'deit-tiny'],
                        dict(embed_dims=192, num_layers=12, num_heads=3,
                             feedforward_channels=768)),
        **dict.fromkeys(['deit-s', 'deit-small'],
                        dict(embed_dims=384, num_layers=12, num_heads=6,
                             feedforward_channels=1536)),
        **dict.fromkeys(['b', 'base', 'deit-b', 'deit-base'],
                        dict(embed_dims=768, num_layers=12, num_heads=12,
                             feedforward_channels=3072)),
        **dict.fromkeys(['l', 'large'],
                        dict(embed_dims=1024, num_layers=24, num_heads=16,
                             feedforward_channels=4096)),
    }
    #: Names mmsape once accepted, with the name of the same network now. They
    #: are ambiguous: mmpretrain's 's' / 'small' is a 768-channel, 8-block ViT,
    #: and it has no 't' / 'tiny'.
    removed_archs: Dict[str, str] = {
        't': 'deit-t', 'tiny': 'deit-tiny', 's': 'deit-s', 'small': 'deit-small'}
    OUT_TYPES = {'raw', 'cls_token', 'featmap', 'avg_featmap'}

    def __init__(self,
                 arch: Union[str, dict] = 'deit-small',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 pos_encoding: Union[dict, Sequence[dict], None] = dict(type='LearnedAPE'),
                 with_cls_token: bool = True,
                 num_register_tokens: int = 0,
                 out_type: str = 'cls_token',
                 out_indices: Union[int, Sequence[int]] = -1,
                 window_size: int = 0,
                 global_attn_indexes: Sequence[int] = (),
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 0.,
                 norm_eps: float = 1e-6,
                 final_norm: bool = True,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._resolve_arch(arch)
        self.embed_dims = self.arch_settings['embed_dims']
        self.num_layers = self.arch_settings['num_layers']
        num_heads = self.arch_settings['num_heads']
        if self.embed_dims % num_heads:
            raise ValueError(f'arch: embed_dims={self.embed_dims} is not divisible by '
                             f'num_heads={num_heads}.')

        if out_type not in self.OUT_TYPES:
            raise ValueError(f'Unsupported out_type {out_type!r}; choose one of '
                             f'{sorted(self.OUT_TYPES)}.')
        if out_type == 'cls_token' and not with_cls_token:
            raise ValueError("out_type='cls_token' needs with_cls_token=True; set "
                             "with_cls_token=True or use out_type='avg_featmap' (GAP).")
        self.out_type = out_type
        self.out_indices = self._resolve_out_indices(out_indices)

        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        # timm's patch embedding, padding any input bottom/right to a patch multiple
        # (mmseg's 'corner' padding) instead of rejecting it.
        self.patch_embed = PatchEmbed(
            img_size=self.img_size, patch_size=patch_size, in_chans=in_channels,
            embed_dim=self.embed_dims, output_fmt='NHWC', strict_img_size=False,
            dynamic_img_pad=True)
        base_grid = tuple(math.ceil(s / patch_size) for s in self.img_size)

        self.with_cls_token = with_cls_token
        self.num_prefix_tokens = int(with_cls_token) + num_register_tokens
        self.cls_token = (nn.Parameter(torch.zeros(1, 1, self.embed_dims))
                          if with_cls_token else None)
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens,
                                                         self.embed_dims))
                                if num_register_tokens else None)

        self.window_size = window_size
        if window_size < 0:
            raise ValueError(f'window_size must be >= 0 (0 = global attention), '
                             f'got {window_size}.')
        if window_size and self.num_prefix_tokens:
            raise ValueError('Window attention (window_size > 0) partitions the patch '
                             'grid only; set with_cls_token=False and '
                             'num_register_tokens=0 (ViTDet style) or window_size=0.')
        self.global_attn_indexes = layers_from_option(
            tuple(global_attn_indexes), self.num_layers, name='global_attn_indexes')

        self.pos_encoding = build_pos_encoding(
            pos_encoding, embed_dims=self.embed_dims, num_heads=num_heads,
            num_layers=self.num_layers, base_grid=base_grid,
            num_prefix_tokens=self.num_prefix_tokens)
        self.pos_encoding.check_compatible(window_size=window_size,
                                           with_cls_token=with_cls_token)
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        drop_path_rates = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        self.blocks = ModuleList([
            PosEncBlock(
                embed_dims=self.embed_dims,
                num_heads=num_heads,
                feedforward_channels=self.arch_settings['feedforward_channels'],
                window_size=0 if i in self.global_attn_indexes else window_size,
                qkv_bias=qkv_bias,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=drop_path_rates[i],
                layer_scale_init_value=layer_scale_init_value,
                norm_eps=norm_eps) for i in range(self.num_layers)
        ])
        self.final_norm = final_norm
        self.norm = nn.LayerNorm(self.embed_dims, eps=norm_eps) if final_norm else nn.Identity()

        self.with_cp = with_cp
        if frozen_stages > self.num_layers:
            raise ValueError(f'frozen_stages={frozen_stages} exceeds the '
                             f'{self.num_layers} blocks of the backbone.')
        self.frozen_stages = frozen_stages
        self._init_default_weights()
        self._freeze_stages()

        # Checkpoints from timm / mmpretrain / mmseg load by every route
        # (init_cfg, load_from, resume, load_state_dict): converted before the
        # load, reported after it.
        self.load_report: Optional[dict] = None
        self._pending_conversion = None
        self._register_load_state_dict_pre_hook(self._convert_checkpoint)
        self.register_load_state_dict_post_hook(self._report_checkpoint)

    # ----------------------------------------------------------------- config
    def _resolve_arch(self, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key in self.removed_archs:
                replacement = self.removed_archs[key]
                old = self.arch_zoo[replacement]
                mmpretrain = ("calls a 768-channel, 8-block network 'small'"
                              if key.startswith('s') else "has no 'tiny'")
                raise ValueError(
                    f"arch {arch!r} is ambiguous and no longer accepted: mmsape's {arch!r} "
                    f"was {replacement!r} ({old['embed_dims']} channels, {old['num_layers']} "
                    f"blocks), while mmpretrain's VisionTransformer {mmpretrain}. Use "
                    f'arch={replacement!r} for the same network as before.')
            if key not in self.arch_zoo:
                raise ValueError(f'Unknown arch {arch!r}; choose one of '
                                 f'{sorted(set(self.arch_zoo))} or pass a dict.')
            return dict(self.arch_zoo[key])
        required = {'embed_dims', 'num_layers', 'num_heads', 'feedforward_channels'}
        if not isinstance(arch, dict) or not required <= set(arch):
            raise ValueError(f'A custom arch must be a dict with keys {sorted(required)}, '
                             f'got {arch!r}.')
        return dict(arch)

    def _resolve_out_indices(self, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, Sequence) or not out_indices:
            raise ValueError(f'out_indices must be an int or a non-empty sequence of '
                             f'ints, got {out_indices!r}.')
        return layers_from_option(out_indices, self.num_layers, name='out_indices')

    # ------------------------------------------------------------------- init
    def _convert_checkpoint(self, state_dict: dict, prefix: str, *args) -> None:
        """Load-state-dict pre-hook: timm / DeiT / mmpretrain / mmseg keys to
        mmsape's (the position encoding converting its own), parameters the
        source lacks set to reproduce it (see
        :mod:`mmsape.models.utils.vit_pretrained`); mmsape's keys pass unchanged."""
        self._pending_conversion = convert_vit_state_dict(state_dict, prefix, self)

    def _report_checkpoint(self, module: nn.Module, incompatible_keys) -> None:
        """Load-state-dict post-hook: keep the load's report in ``load_report``
        and log it when the checkpoint needed converting."""
        conversion, self._pending_conversion = self._pending_conversion, None
        if conversion is None:
            return
        self.load_report = conversion.report(incompatible_keys.missing_keys,
                                             incompatible_keys.unexpected_keys)
        if conversion.changed:
            print_log(format_load_report(self.load_report), logger='current')

    def _init_default_weights(self) -> None:
        """timm's ViT init at construction: trunc-normal linears and prefix
        tokens, zero biases (so a model is usable without ``init_weights``)."""
        for prefix in (self.cls_token, self.register_tokens):
            if prefix is not None:
                trunc_normal_(prefix, std=.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor, pad_mask: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
        """Encode images.

        Args:
            x (Tensor): ``(B, C, H, W)`` images of any H, W.
            pad_mask (Tensor, optional): ``(B, H, W)`` bool, True on pixels that
                are batch padding rather than image (mmdet pads each image to
                the largest in the batch). Encodings that use it (PEG) keep
                padding from acting as image. Defaults to None (all image).

        Returns:
            tuple[Tensor]: One output per ``out_indices``, shaped by ``out_type``.
        """
        self._check_input(x, pad_mask)
        batch = x.shape[0]
        tokens = self.patch_embed(x)  # (B, H, W, C), input padded to patch multiples
        grid = TokenGrid(tokens.shape[1], tokens.shape[2], self.num_prefix_tokens,
                         self._token_pad_mask(pad_mask, tokens.shape[1:3]))
        x = tokens.reshape(batch, grid.num_patches, self.embed_dims)
        prefix = [p.expand(batch, -1, -1) for p in (self.cls_token, self.register_tokens)
                  if p is not None]
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        x = self.drop_after_pos(self.pos_encoding.encode_tokens(x, grid))

        outs = []
        for index, block in enumerate(self.blocks):
            attend = partial(self.pos_encoding.attention, index)
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, grid, attend, use_reentrant=False)
            else:
                x = block(x, grid, attend)
            x = self.pos_encoding.after_block(index, x, grid)
            if index == self.num_layers - 1:
                x = self.norm(x)
            if index in self.out_indices:
                outs.append(self._format_output(x, grid))
        return tuple(outs)

    def _check_input(self, x: Tensor, pad_mask: Optional[Tensor]) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f'{type(self).__name__} expects images of shape (B, C, H, W), '
                             f'got {shape}. Batch single images with x[None].')
        if x.shape[0] == 0:
            raise ValueError('Empty batch (B=0): pass at least one image.')
        if x.shape[-2] == 0 or x.shape[-1] == 0:
            raise ValueError(f'Images of size {tuple(x.shape[-2:])} have no pixels; drop empty '
                             f'images from the batch.')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'Input has {x.shape[1]} channels but the backbone was built '
                             f'with in_channels={self.in_channels}; convert the images '
                             f'(e.g. grey -> RGB) or set in_channels={x.shape[1]}.')
        if not x.is_floating_point():
            raise ValueError(f'Input dtype {x.dtype} is not floating point; normalise '
                             f'images to float (the data preprocessor does this).')
        weight_dtype = self.patch_embed.proj.weight.dtype
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f'Input dtype {x.dtype} differs from the weights\' {weight_dtype}; '
                             f'convert the images (x.to({weight_dtype})), convert the model '
                             f'(model.to({x.dtype})) or run under torch.autocast.')
        self._check_finite(x)
        if pad_mask is not None and (pad_mask.dim() != 3 or pad_mask.shape[0] != x.shape[0]
                                     or tuple(pad_mask.shape[-2:]) != tuple(x.shape[-2:])):
            raise ValueError(f'pad_mask of shape {tuple(pad_mask.shape)} does not match '
                             f'the images (B, H, W) = {(x.shape[0], *x.shape[-2:])}.')

    @staticmethod
    def _check_finite(x: Tensor) -> None:
        message = ('Input images contain NaN or Inf values; check the data pipeline '
                   '(normalisation by a zero std, corrupt files).')
        finite = torch.isfinite(x).all()
        if torch.compiler.is_compiling():
            # Branching on a tensor's value would break the compiled graph:
            # there the check is an assertion inside it (the same message, as
            # a RuntimeError, or a device-side assertion on CUDA).
            torch._assert_async(finite, message)
        elif not finite:
            raise ValueError(message)

    def _token_pad_mask(self, pad_mask: Optional[Tensor],
                        grid_hw: Tuple[int, int]) -> Optional[Tensor]:
        """Pixel padding mask -> token mask: a token is padding if none of its
        pixels is image (the bottom/right patch padding counts as padding)."""
        if pad_mask is None:
            return None
        image = (~pad_mask.bool()).float()[:, None]
        height, width = grid_hw
        image = F.pad(image, (0, width * self.patch_size - image.shape[-1],
                              0, height * self.patch_size - image.shape[-2]))
        return F.max_pool2d(image, self.patch_size)[:, 0] == 0

    def _format_output(self, x: Tensor, grid: TokenGrid) -> Tensor:
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        patches = x[:, grid.num_prefix:]
        if self.out_type == 'featmap':
            return grid_to_map(patches, grid)
        if grid.pad_mask is None:
            return patches.mean(dim=1)
        # Average over image tokens only, so batch padding does not dilute GAP.
        weights = (~grid.pad_mask).flatten(1).to(patches.dtype)[..., None]
        return (patches * weights).sum(1) / weights.sum(1).clamp(min=1)

    # --------------------------------------------------------------- training
    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed]
        # Token-level encodings (APE tables) belong to the stem; per-layer
        # attention parameters are frozen with their blocks below.
        frozen_params = [p for p in (self.cls_token, self.register_tokens) if p is not None]
        for name, param in self.pos_encoding.named_parameters():
            layer = self.pos_encoding.layer_index_of(name)
            if layer is None or layer < self.frozen_stages:
                frozen_params.append(param)
        frozen += list(self.blocks[:self.frozen_stages])
        if self.frozen_stages == self.num_layers:
            frozen.append(self.norm)
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
        for param in frozen_params:
            param.requires_grad = False

    def train(self, mode: bool = True) -> 'PosEncViT':
        super().train(mode)
        self._freeze_stages()
        return self

    def no_weight_decay(self) -> set:
        """Names of the parameters that get no weight decay: the prefix tokens and
        what the position encoding declares. mmsape's optimizer wrapper
        constructors read them (see :mod:`mmsape.engine.optimizers`)."""
        names = {name for name in ('cls_token', 'register_tokens')
                 if getattr(self, name) is not None}
        return names | {f'pos_encoding.{n}' for n in self.pos_encoding.no_weight_decay()}

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer depth of a parameter, for layer-wise learning-rate decay.

        Same contract as mmpretrain's ViT: the stem (patch embedding, prefix
        tokens, token-level encodings) is depth 0, block ``i`` is ``i + 1``, and
        everything after the last block (final norm, neck, head) is
        ``num_layers + 1``.

        Returns:
            tuple[int, int]: The parameter's depth and the total depth.
        """
        total = self.num_layers + 2
        if not param_name.startswith(prefix):
            return total - 1, total
        name = param_name[len(prefix):]
        if name.startswith(('cls_token', 'register_tokens', 'patch_embed')):
            depth = 0
        elif name.startswith('pos_encoding.'):
            layer = self.pos_encoding.layer_index_of(name[len('pos_encoding.'):])
            depth = 0 if layer is None else layer + 1
        elif name.startswith('blocks.'):
            depth = int(name.split('.')[1]) + 1
        else:
            depth = total - 1
        return depth, total
