# The segmentation demo (a custom 96-channel, 4-block ViT, patch 8) with ALiBi2D,
# trainable on CPU in minutes.
_base_ = ['../../../configs/demo/upernet_vit-96d4-p8-sape2_mln_1xb4-300iter_demo-ade20k.py']
custom_imports = dict(imports=['mmsape.models', 'projects.alibi2d.alibi2d'],
                      allow_failed_imports=False)
model = dict(backbone=dict(pos_encoding=dict(_delete_=True, type='mmsape.ALiBi2D')))
