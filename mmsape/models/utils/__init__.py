from .sape2_pretrained import convert_authors_sape2_state, is_authors_sape2_state
from .vit_pretrained import convert_vit_keys, load_vit_pretrained, unwrap_state_dict

__all__ = ['convert_vit_keys', 'load_vit_pretrained', 'unwrap_state_dict',
           'convert_authors_sape2_state', 'is_authors_sape2_state']
