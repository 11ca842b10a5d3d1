# ViT-S/16 as ViTDet uses a plain ViT for detection (Li et al., ECCV 2022):
# window attention (14 x 14 tokens) in every block but the global blocks
# 2, 5, 8, 11, no class token, the last block's feature map for SimpleFPN, no
# final norm; DeiT-S weights. Detector configs take it as
# `backbone=dict(_base_.vitdet_backbone, _delete_=True, img_size=...)` and set
# the training size (the learned APE table's grid); the demo shrinks it.
vitdet_backbone = dict(
    type='mmsape.PosEncViT',
    arch='deit-small',
    patch_size=16,
    with_cls_token=False,
    out_type='featmap',
    out_indices=(11, ),
    window_size=14,
    global_attn_indexes=(2, 5, 8, 11),
    drop_path_rate=0.1,
    final_norm=False,
    pos_encoding=dict(type='mmsape.LearnedAPE'),
    init_cfg=dict(type='Pretrained', checkpoint='pretrain/deit_small_patch16_224-cd65a155.pth'))
