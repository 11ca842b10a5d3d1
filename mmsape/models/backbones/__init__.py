from .pos_enc_vit import PosEncViT

__all__ = ['PosEncViT']
