"""ViTDet's simple feature pyramid (Li et al., ECCV 2022) for plain ViT backbones."""
from typing import List, Sequence, Tuple

import torch.nn.functional as F
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from mmsape.registry import MODELS


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """Multi-scale maps from the single stride-16 map of a plain ViT.

    Each scale is made from the LAST backbone output only (ViTDet's finding: no
    need for hierarchical backbone stages): 4x by two stride-2 transposed convs,
    2x by one, 1x as is, 0.5x by max-pooling; then a 1x1 and a 3x3 conv with
    LayerNorm. Levels beyond ``len(scale_factors)`` are made by stride-2
    max-pooling of the last level, as mmdet's FPN does without extra convs
    (Mask R-CNN's RPN wants 5 levels, P2-P6).

    Args:
        in_channels (int): Channels of the backbone map.
        out_channels (int): Channels of every output level.
        scale_factors (Sequence[float]): Resampling of each level, from {4, 2, 1,
            0.5}. Defaults to (4.0, 2.0, 1.0, 0.5).
        num_outs (int): Output levels, >= len(scale_factors). Defaults to 5.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-6.
        init_cfg (dict | list[dict], optional): Initialisation config.

    Examples:
        >>> import torch
        >>> neck = SimpleFPN(in_channels=64, out_channels=32)
        >>> outs = neck((torch.rand(1, 64, 20, 30),))
        >>> [tuple(o.shape[-2:]) for o in outs]
        [(80, 120), (40, 60), (20, 30), (10, 15), (5, 8)]
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 num_outs: int = 5,
                 norm_eps: float = 1e-6,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_outs < len(scale_factors):
            raise ValueError(f'num_outs={num_outs} is smaller than the number of '
                             f'scale_factors ({len(scale_factors)}); raise num_outs.')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.stages = nn.ModuleList(
            nn.Sequential(*self._resample_layers(scale, in_channels, norm_eps),
                          *self._output_convs(self._resampled_channels(scale, in_channels),
                                              out_channels, norm_eps))
            for scale in scale_factors)

    @staticmethod
    def _resampled_channels(scale: float, in_channels: int) -> int:
        return {4.0: in_channels // 4, 2.0: in_channels // 2}.get(float(scale), in_channels)

    @staticmethod
    def _resample_layers(scale: float, channels: int, norm_eps: float) -> List[nn.Module]:
        if scale == 4.0:
            return [nn.ConvTranspose2d(channels, channels // 2, 2, stride=2),
                    LayerNorm2d(channels // 2, eps=norm_eps), nn.GELU(),
                    nn.ConvTranspose2d(channels // 2, channels // 4, 2, stride=2)]
        if scale == 2.0:
            return [nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)]
        if scale == 1.0:
            return []
        if scale == 0.5:
            return [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        raise ValueError(f'scale_factors may contain 4.0, 2.0, 1.0 and 0.5, got {scale}.')

    @staticmethod
    def _output_convs(in_channels: int, out_channels: int, norm_eps: float) -> List[nn.Module]:
        return [nn.Conv2d(in_channels, out_channels, 1, bias=False),
                LayerNorm2d(out_channels, eps=norm_eps),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels, eps=norm_eps)]

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        if isinstance(inputs, Tensor):
            inputs = (inputs, )
        if inputs[-1].dim() != 4 or inputs[-1].shape[1] != self.in_channels:
            raise ValueError(f'SimpleFPN expects a (B, {self.in_channels}, H, W) map; got '
                             f'{tuple(inputs[-1].shape)}. Set the backbone to '
                             f"out_type='featmap' and in_channels to its embed_dims.")
        feature = inputs[-1]
        outs = [stage(feature) for stage in self.stages]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
