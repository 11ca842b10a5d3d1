"""Backbone checkpoint conversion (timm / DeiT / mmpretrain / mmseg ViTs); each
position encoding converts its own keys (``BasePositionEncoding.convert_checkpoint_keys``)."""
from .vit_pretrained import (
                             ViTCheckpointConversion,
                             convert_vit_keys,
                             convert_vit_state_dict,
                             format_load_report,
                             load_vit_pretrained,
                             unwrap_state_dict,
)

__all__ = [
    'ViTCheckpointConversion', 'convert_vit_keys', 'convert_vit_state_dict',
    'format_load_report', 'load_vit_pretrained', 'unwrap_state_dict'
]
