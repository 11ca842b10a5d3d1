# ADE20K with the ALiBi2D encoding from this project: everything else is
# mmsape's ViT-S UPerNet recipe. Run from the repository root, e.g.
#   python tools/train.py projects/alibi2d/configs/upernet_vit-s16-alibi2d_mln_8xb2-160k_ade20k-512x512.py
_base_ = ['../../../configs/upernet/upernet_vit-s16_mln_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmsape.models', 'projects.alibi2d.alibi2d'],
                      allow_failed_imports=False)
model = dict(backbone=dict(pos_encoding=dict(_delete_=True, type='mmsape.ALiBi2D')))
