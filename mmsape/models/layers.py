"""Small layers registered for configs of other toolboxes."""
from timm.layers import LayerNorm2d

from mmsape.registry import MODELS

# LayerNorm over the channels of NCHW maps (ViTDet's heads and necks). mmcv's
# build_norm_layer finds it as norm_cfg=dict(type='mmsape.LN2d').
MODELS.register_module('LN2d', module=LayerNorm2d)

__all__ = ['LayerNorm2d']
