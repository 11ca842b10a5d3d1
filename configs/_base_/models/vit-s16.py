# ViT-S/16: DeiT-S (arch='deit-small': 384 channels, 12 blocks, 6 heads) on
# 16-pixel patches, with a learned APE (the configs/_base_/pos_encodings/ files
# swap it). Task configs take it as
#     backbone=dict(_base_.vit_s16_backbone, _delete_=True, img_size=..., ...)
# and set what their heads read (out_type, out_indices); the dense tasks start
# from DeiT-S's ImageNet weights (timm's file; its keys are converted at load).
vit_s16_backbone = dict(
    type='mmsape.PosEncViT',
    arch='deit-small',
    patch_size=16,
    pos_encoding=dict(type='mmsape.LearnedAPE'))
deit_s16_pretrained = dict(
    type='Pretrained', checkpoint='pretrain/deit_small_patch16_224-cd65a155.pth')
