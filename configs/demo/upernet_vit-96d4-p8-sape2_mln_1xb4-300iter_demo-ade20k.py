# Demo: a small SaPE2 ViT + MultiLevelNeck + UPerNet, trained on CPU in minutes on
# the generated ADE20K-format set (python tools/misc/generate_demo_data.py).
# Same structure as configs/upernet/ (mmseg's DeiT-S UPerNet recipe), scaled down:
# vit-96d4-p8 is a custom ViT of 96 channels and 4 blocks (3 heads) on 8-pixel
# patches, not a ViT-T/S.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['mmsape.models', 'mmsape.engine'], allow_failed_imports=False)

data_root = 'data/demo/ade/ADEChallengeData2016'
# mmseg's ADE20KDataset only accepts the 150 ADE classes: the demo's four
# classes go through BaseSegDataset on the same folder layout.
classes = ('background', 'green_blob', 'upper_blob', 'lower_blob')
palette = [[120, 120, 120], [0, 200, 0], [220, 20, 60], [30, 144, 255]]
embed_dims = 96
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size_divisor=8),
    backbone=dict(
        type='mmsape.PosEncViT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=3,
                  feedforward_channels=2 * embed_dims),
        img_size=(128, 192),
        patch_size=8,
        out_type='featmap',
        out_indices=(0, 1, 2, 3),
        final_norm=False,
        pos_encoding=dict(type='mmsape.SaPE2')),
    neck=dict(type='MultiLevelNeck', in_channels=[embed_dims] * 4, out_channels=embed_dims,
              scales=[2, 1, 0.5, 0.25]),  # patch 8: strides 4, 8, 16, 32
    decode_head=dict(
        type='UPerHead',
        in_channels=[embed_dims] * 4,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=64,
        dropout_ratio=0.1,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=embed_dims,
        in_index=3,
        channels=32,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# Resize instead of random crops: a crop could move a blob pair's members and
# the labels depend on their arrangement. Images keep their aspect ratios
# (1:2 to 2:1), so batches mix sizes and test images are non-square.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.8, 1.2), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# Test-time augmentation (tools/test.py --tta): the test resize with and without a
# horizontal flip (which keeps every label); the default runtime's SegTTAModel
# averages the two predictions.
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(256, 128), keep_ratio=True)],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='PackSegInputs')],
        ]),
]
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True,
    metainfo=dict(classes=classes, palette=palette))
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
# mmseg's IoUMetric with each class's IoU among its results (IoU.<class>)
val_evaluator = dict(type='mmsape.PerClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 300
optim_wrapper = dict(
    type='OptimWrapper',
    # No weight decay on what the model declares in no_weight_decay().
    constructor='mmsape.DeclaredDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0., power=1.0, begin=30, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='mmsape.AtomicCheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
# progress bars, and torch's RNG state in checkpoints so a resumed run repeats an
# uninterrupted one exactly
custom_hooks = [dict(type='mmsape.ProgressBarHook'), dict(type='mmsape.TorchRNGStateHook')]
