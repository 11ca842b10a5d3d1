# The SaPE2 paper's CIFAR setting: ViT-S with 4x4 patches on 32x32 images
# (8x8 tokens), 400 epochs. The paper does not publish its optimiser; this
# uses the DeiT-style recipe scaled to CIFAR (AdamW 1e-3 at batch 128, cosine
# with 10 warm-up epochs, label smoothing 0.1, mixup 0.8 / cutmix 1.0).
# Published: APE 87.41, 2D RoPE 89.92, CoPE+APE 92.54, SaPE2 91.06,
# SaPE2+APE 93.98 (CIFAR-10 top-1).
_base_ = [
    'mmpretrain::_base_/datasets/cifar10_bs16.py',
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/mmsape_runtime.py',
]
default_hooks = dict(checkpoint=_base_.atomic_checkpoint_hook)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmsape.PosEncViT',
        arch='deit-small',
        img_size=32,
        patch_size=4,
        out_type='cls_token',
        drop_path_rate=0.1,
        pos_encoding=dict(type='mmsape.LearnedAPE')),
    neck=None,
    head=dict(
        type='VisionTransformerClsHead',
        num_classes=10,
        in_channels=384,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

# mmpretrain's CIFAR pipelines with their types in mmpretrain's scope
# ('mmpretrain.X'), so that they build the same whichever toolbox's scope is
# current (mmpretrain's ImageClassificationInferencer builds them in the caller's).
train_pipeline = [
    dict(type='mmpretrain.RandomCrop', crop_size=32, padding=4),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.PackInputs'),
]
test_pipeline = [dict(type='mmpretrain.PackInputs')]
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=256, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    constructor=_base_.declared_decay_constructor,
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=390, by_epoch=True, begin=10, end=400, eta_min=1e-5)
]
train_cfg = dict(by_epoch=True, max_epochs=400, val_interval=10)
val_cfg = dict()
test_cfg = dict()
# The batch the learning rate is set for (1 GPU x 128 images); tools/train.py
# --auto-scale-lr scales the lr to the batch a run trains with.
auto_scale_lr = dict(enable=False, base_batch_size=128)
