# Demo: a small SaPE2 ViT classifier on the generated ImageNet-style folders
# (mmpretrain's CustomDataset), trainable on CPU in minutes: the DeiT-style
# recipe of configs/vit_cls/ scaled down. vit-96d4-p8 is a custom ViT of 96
# channels and 4 blocks (3 heads) on 8-pixel patches, not a ViT-T/S; it trains
# from its own initialisation, without mixup / cutmix, at a fixed lr schedule.
_base_ = ['../vit_cls/vit-s16_4xb256-300e_in1k.py']
# progress bars, and torch's RNG state in checkpoints so a resumed run repeats an
# uninterrupted one exactly
custom_hooks = _base_.progress_and_rng_hooks

data_root = 'data/demo/imagenet'
embed_dims = 96
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsape.PosEncViT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=3,
                  feedforward_channels=2 * embed_dims),
        img_size=(64, 96),
        patch_size=8,
        out_type='cls_token',
        pos_encoding=dict(type='mmsape.SaPE2')),
    head=dict(num_classes=6, in_channels=embed_dims, topk=(1, 5)),
    init_cfg=None,
    train_cfg=None)
data_preprocessor = dict(num_classes=6)

# Resize keeping the aspect ratio (1:2 to 2:1): batches mix sizes (padded by
# the data preprocessor) and the classes that depend on layout keep their label
# (horizontal flips preserve every label; crops could move a spot across the
# midline). Types are scoped as in configs/vit_cls/ (see there).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmpretrain.ResizeEdge', scale=64, edge='short'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmpretrain.ResizeEdge', scale=64, edge='short'),
    dict(type='mmpretrain.PackInputs'),
]
train_dataloader = dict(
    _delete_=True,
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='train',
                 pipeline=train_pipeline))
val_dataloader = dict(
    _delete_=True,
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='val',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 300
optim_wrapper = dict(
    _delete_=True,
    constructor=_base_.declared_decay_constructor,
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min=1e-5),
]
train_cfg = dict(_delete_=True, by_epoch=False, max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
# The batch the learning rate is set for (1 process x 8 images).
auto_scale_lr = dict(enable=False, base_batch_size=8)
randomness = dict(seed=0)
