# DeiT-S recipe (mmpretrain's: AdamW, cosine, mixup + cutmix, label smoothing,
# RandAugment, random erasing; reported 79.9 / 80.69 top-1) with mmsape's ViT.
# The vit-s16-<encoding>_* files change only the position encoding.
_base_ = [
    'mmpretrain::deit/deit-small_4xb256_in1k.py',
    '../_base_/models/vit-s16.py',
    '../_base_/mmsape_runtime.py',
]
default_hooks = dict(checkpoint=_base_.atomic_checkpoint_hook)

model = dict(
    backbone=dict(_base_.vit_s16_backbone, _delete_=True, img_size=224, out_type='cls_token'))

optim_wrapper = dict(constructor=_base_.declared_decay_constructor)
# The batch the learning rate is set for (4 GPUs x 256 images); tools/train.py
# --auto-scale-lr scales the lr to the batch a run trains with.
auto_scale_lr = dict(enable=False, base_batch_size=1024)

# mmpretrain's ImageNet pipelines (DeiT's augmentation) with their types in
# mmpretrain's scope ('mmpretrain.X'), so that they build the same whichever
# toolbox's scope is current (mmpretrain's ImageClassificationInferencer builds
# them in the caller's). LoadImageFromFile (mmcv's, the same in every scope)
# keeps its bare name, by which the toolboxes' inferencers find it.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmpretrain.RandomResizedCrop', scale=224, backend='pillow',
         interpolation='bicubic'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.RandAugment', policies='timm_increasing', num_policies=2,
         total_level=10, magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in _base_.bgr_mean], interpolation='bicubic')),
    dict(type='mmpretrain.RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=_base_.bgr_mean, fill_std=_base_.bgr_std),
    dict(type='mmpretrain.PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmpretrain.ResizeEdge', scale=256, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='mmpretrain.CenterCrop', crop_size=224),
    dict(type='mmpretrain.PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
