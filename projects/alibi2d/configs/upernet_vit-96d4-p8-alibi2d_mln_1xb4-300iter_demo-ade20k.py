# The segmentation demo with ALiBi2D, trainable on CPU in minutes.
_base_ = ['../../../configs/demo/seg_vit-t8-sape2_upernet_demo.py']
custom_imports = dict(imports=['mmsape.models', 'projects.alibi2d.alibi2d'],
                      allow_failed_imports=False)
model = dict(backbone=dict(pos_encoding=dict(_delete_=True, type='mmsape.ALiBi2D')))
