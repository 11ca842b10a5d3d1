"""ViTDet's simple feature pyramid (Li et al., ECCV 2022) for plain ViT backbones."""
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmsape.registry import MODELS

#: Where the first extra level's conv reads from, as in mmdet's ``FPN``.
EXTRA_CONV_SOURCES = ('on_input', 'on_lateral', 'on_output')


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """Multi-scale maps from the single stride-16 map of a plain ViT.

    Each level is made from the LAST backbone output only (ViTDet's finding: no
    need for hierarchical backbone stages). The map is resampled: 4x by two
    stride-2 transposed convs with a norm and GELU between them, 2x by one, 1x
    as is, 0.5x by max-pooling; then, as in mmdet's ``FPN``, a 1x1 lateral conv
    and a 3x3 output conv (:class:`~mmcv.cnn.ConvModule`, so the norm and
    activation are config choices). Unlike ``FPN`` there is no top-down
    pathway: the levels do not mix.

    Levels beyond ``len(scale_factors)`` are made like mmdet's ``FPN`` makes them:
    by stride-2 max-pooling of the last output without extra convs (Mask R-CNN's
    P6), or by 3x3 stride-2 convs with ``add_extra_convs`` (RetinaNet's P6 and
    P7). For ``'on_input'`` the first extra conv reads the last level's
    resampled map, the counterpart of the C5 map that mmdet's RetinaNet feeds
    it.

    Args:
        in_channels (int): Channels of the backbone map.
        out_channels (int): Channels of every output level.
        scale_factors (Sequence[float]): Resampling of each level, from {4, 2, 1,
            0.5}. Defaults to (4.0, 2.0, 1.0, 0.5).
        num_outs (int): Output levels, >= len(scale_factors). Defaults to 5.
        add_extra_convs (bool | str): How the levels beyond ``scale_factors``
            are made. False: stride-2 max-pooling of the previous output.
            'on_input' (or True), 'on_lateral', 'on_output': a 3x3 stride-2 conv
            on the last level's resampled map, lateral conv output or output;
            each further level convolves the previous one. Defaults to False.
        relu_before_extra_convs (bool): ReLU before the second and later extra
            convs (mmdet's ``FPN`` option). Defaults to False.
        conv_cfg (dict, optional): Conv layer config of the lateral, output and
            extra convs. Defaults to None (``nn.Conv2d``).
        norm_cfg (dict, optional): Norm after every conv and inside the 4x
            resampling; None for none (the convs then get a bias). Defaults to
            ``dict(type='mmsape.LN2d', eps=1e-6)``: LayerNorm over channels with
            ViTDet's epsilon (mmcv's ``build_norm_layer`` would default to 1e-5).
        act_cfg (dict, optional): Activation after the lateral, output and
            extra convs. Defaults to None (ViTDet; mmdet's ``FPN`` default).
        init_cfg (dict | list[dict], optional): Initialisation config. The convs
            are initialised by ``ConvModule`` (Kaiming normal, fan-out, as
            ViTDet's ``c2_msra_fill``).

    Examples:
        >>> import torch
        >>> neck = SimpleFPN(in_channels=64, out_channels=32)
        >>> outs = neck((torch.rand(1, 64, 20, 30),))
        >>> [tuple(o.shape[-2:]) for o in outs]
        [(80, 120), (40, 60), (20, 30), (10, 15), (5, 8)]
        >>> retina = SimpleFPN(64, 32, scale_factors=(2.0, 1.0, 0.5), num_outs=5,
        ...                    add_extra_convs='on_input')
        >>> [tuple(o.shape[-2:]) for o in retina((torch.rand(1, 64, 20, 30),))]
        [(40, 60), (20, 30), (10, 15), (5, 8), (3, 4)]
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 num_outs: int = 5,
                 add_extra_convs: Union[bool, str] = False,
                 relu_before_extra_convs: bool = False,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = dict(type='mmsape.LN2d', eps=1e-6),
                 act_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_outs < len(scale_factors):
            raise ValueError(f'num_outs={num_outs} is smaller than the number of '
                             f'scale_factors ({len(scale_factors)}); raise num_outs.')
        if add_extra_convs is True:
            add_extra_convs = 'on_input'
        if add_extra_convs and add_extra_convs not in EXTRA_CONV_SOURCES:
            raise ValueError(f'add_extra_convs={add_extra_convs!r}; use False (max-pooled '
                             f'extra levels), True or one of {EXTRA_CONV_SOURCES}.')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale_factors = tuple(float(scale) for scale in scale_factors)
        self.num_outs = num_outs
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs

        conv_args = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)
        self.resamplers = nn.ModuleList()
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for scale in self.scale_factors:
            self.resamplers.append(self._resampler(scale, in_channels, norm_cfg))
            self.lateral_convs.append(
                ConvModule(self._resampled_channels(scale, in_channels), out_channels, 1,
                           **conv_args))
            self.fpn_convs.append(
                ConvModule(out_channels, out_channels, 3, padding=1, **conv_args))
        self.extra_convs = nn.ModuleList()
        if add_extra_convs:
            for index in range(num_outs - len(self.scale_factors)):
                channels = (self._resampled_channels(self.scale_factors[-1], in_channels)
                            if index == 0 and add_extra_convs == 'on_input' else out_channels)
                self.extra_convs.append(
                    ConvModule(channels, out_channels, 3, stride=2, padding=1, **conv_args))
        self._register_load_state_dict_pre_hook(self._rename_stage_keys)

    @staticmethod
    def _resampled_channels(scale: float, in_channels: int) -> int:
        return {4.0: in_channels // 4, 2.0: in_channels // 2}.get(scale, in_channels)

    @staticmethod
    def _resampler(scale: float, channels: int, norm_cfg: Optional[dict]) -> nn.Sequential:
        if scale == 4.0:
            norm = (build_norm_layer(norm_cfg, channels // 2)[1] if norm_cfg is not None
                    else nn.Identity())
            return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, 2, stride=2),
                                 norm, nn.GELU(),
                                 nn.ConvTranspose2d(channels // 2, channels // 4, 2, stride=2))
        if scale == 2.0:
            return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, 2, stride=2))
        if scale == 1.0:
            return nn.Sequential()
        if scale == 0.5:
            return nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        raise ValueError(f'scale_factors may contain 4.0, 2.0, 1.0 and 0.5, got {scale}.')

    def _rename_stage_keys(self, state_dict, prefix, *args) -> None:
        """Load checkpoints of mmsape 0.1's layout, where level ``i`` was one
        ``stages.i`` sequence: the resampling layers, then conv 1x1, norm, conv
        3x3, norm."""
        pattern = re.compile(re.escape(prefix) + r'stages\.(\d+)\.(\d+)\.(.+)')
        for key in [k for k in state_dict if pattern.fullmatch(k)]:
            level, layer, name = pattern.fullmatch(key).groups()
            level, layer = int(level), int(layer)
            offset = layer - len(self.resamplers[level])
            if offset < 0:
                new = f'resamplers.{level}.{layer}.{name}'
            else:
                convs = ('lateral_convs', 'fpn_convs')[offset // 2]
                part = 'conv' if offset % 2 == 0 else getattr(self, convs)[level].norm_name
                new = f'{convs}.{level}.{part}.{name}'
            state_dict[prefix + new] = state_dict.pop(key)

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        if isinstance(inputs, Tensor):
            inputs = (inputs, )
        if inputs[-1].dim() != 4 or inputs[-1].shape[1] != self.in_channels:
            raise ValueError(f'SimpleFPN expects a (B, {self.in_channels}, H, W) map; got '
                             f'{tuple(inputs[-1].shape)}. Set the backbone to '
                             f"out_type='featmap' and in_channels to its embed_dims.")
        feature = inputs[-1]
        resampled = [resample(feature) for resample in self.resamplers]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, resampled)]
        outs: List[Tensor] = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        if self.extra_convs:
            source = dict(on_input=resampled, on_lateral=laterals,
                          on_output=outs)[self.add_extra_convs][-1]
            outs.append(self.extra_convs[0](source))
            for conv in self.extra_convs[1:]:
                outs.append(conv(F.relu(outs[-1]) if self.relu_before_extra_convs
                                 else outs[-1]))
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        # LayerNorm2d permutes to channels-last and back, so its maps are strided
        # views of channels-last memory. mmcv's RoIAlign (CPU and CUDA kernels)
        # reads the raw buffer as contiguous NCHW and pools the wrong values: the
        # RoI heads then learn nothing. mmdet's FPN returns contiguous maps too.
        return tuple(out.contiguous() for out in outs)
