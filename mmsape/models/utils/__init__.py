from .vit_pretrained import convert_vit_keys, load_vit_pretrained, unwrap_state_dict

__all__ = ['convert_vit_keys', 'load_vit_pretrained', 'unwrap_state_dict']
