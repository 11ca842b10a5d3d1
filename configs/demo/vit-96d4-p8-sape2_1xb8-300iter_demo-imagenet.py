# Demo: a small SaPE2 ViT classifier on the generated ImageNet-style folders
# (mmpretrain's CustomDataset), trainable on CPU in minutes. Same structure as
# configs/vit_cls/ (DeiT-style recipe), scaled down: vit-96d4-p8 is a custom
# ViT of 96 channels and 4 blocks (3 heads) on 8-pixel patches, not a ViT-T/S.
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmsape.models', 'mmsape.engine'], allow_failed_imports=False)

data_root = 'data/demo/imagenet'
embed_dims = 96
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmsape.PosEncViT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=3,
                  feedforward_channels=2 * embed_dims),
        img_size=(64, 96),
        patch_size=8,
        out_type='cls_token',
        pos_encoding=dict(type='mmsape.SaPE2')),
    neck=None,
    head=dict(
        type='VisionTransformerClsHead',
        num_classes=6,
        in_channels=embed_dims,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5)))

data_preprocessor = dict(
    num_classes=6,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)
# Resize keeping the aspect ratio (1:2 to 2:1): batches mix sizes (padded by
# the data preprocessor) and the classes that depend on layout keep their label
# (horizontal flips preserve every label; crops could move a spot across the
# midline).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='train',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='val',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator

max_iters = 300
optim_wrapper = dict(
    # No weight decay on what the model declares in no_weight_decay().
    constructor='mmsape.DeclaredDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min=1e-5),
]
train_cfg = dict(by_epoch=False, max_iters=max_iters, val_interval=max_iters)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25),
    checkpoint=dict(type='mmsape.AtomicCheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
# progress bars, and torch's RNG state in checkpoints so a resumed run repeats an
# uninterrupted one exactly
custom_hooks = [dict(type='mmsape.ProgressBarHook'), dict(type='mmsape.TorchRNGStateHook')]
