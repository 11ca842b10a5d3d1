from .sape2_pretrained import convert_authors_sape2_state, is_authors_sape2_state
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
    'format_load_report', 'load_vit_pretrained', 'unwrap_state_dict',
    'convert_authors_sape2_state', 'is_authors_sape2_state'
]
