# ViT-S/16: DeiT-S (arch='deit-small': 384 channels, 12 blocks, 6 heads) on
# 16-pixel patches, with a learned APE (the configs/_base_/pos_encodings/ files
# swap it). Task configs take it as
#     backbone=dict(_base_.vit_s16_backbone, _delete_=True, img_size=..., ...)
# and set what their heads read (out_type, out_indices); the dense tasks start
# from DeiT-S's ImageNet weights.
vit_s16_backbone = dict(
    type='mmsape.PosEncViT',
    arch='deit-small',
    patch_size=16,
    pos_encoding=dict(type='mmsape.LearnedAPE'))
# DeiT-S's ImageNet weights as the DeiT release publishes them (DeiT / timm
# keys, under 'model'), with no converter step: downloaded once into the torch
# hub cache ($TORCH_HOME/hub/checkpoints/), loaded without executing pickled
# code (mmsape.engine's loaders) and converted by PosEncViT's load hook. Offline:
# copy the file into that cache, or name a local copy with
#     --cfg-options model.backbone.init_cfg.checkpoint=PATH
deit_s16_pretrained = dict(
    type='Pretrained',
    checkpoint='https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth')
