# ViT-S/16 as ViTDet uses a plain ViT for detection (Li et al., ECCV 2022):
# window attention (14 x 14 tokens) in every block but the global blocks
# 2, 5, 8, 11, no class token, the last block's feature map for SimpleFPN, no
# final norm; DeiT-S weights. Detector configs take it as
# `backbone=dict(_base_.vitdet_backbone, _delete_=True, img_size=...)` and set
# the training size (the learned APE table's grid); the demo shrinks it.
_base_ = ['./vit-s16.py']
vitdet_backbone = dict(
    _base_.vit_s16_backbone,
    with_cls_token=False,
    out_type='featmap',
    out_indices=(11, ),
    window_size=14,
    global_attn_indexes=(2, 5, 8, 11),
    drop_path_rate=0.1,
    final_norm=False,
    init_cfg=_base_.deit_s16_pretrained)
