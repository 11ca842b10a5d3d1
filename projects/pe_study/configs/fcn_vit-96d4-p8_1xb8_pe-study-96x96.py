# The study's segmenter: a small ViT (96 channels, 4 blocks, 3 heads, 8-pixel patches)
# and a per-token head (mmseg's FCNHead with one 1x1 conv), trained on the study's
# generated set (projects/pe_study/study/dataset.py) at 96 x 96 pixels.
#
# Why a 1x1 head and no neck: a 3x3 convolution with zero padding (UPerNet's, an FPN's)
# tells every token how far it is from the image border, i.e. it is itself a position
# encoding; so would a pyramid pooling module. Here every piece of spatial reasoning
# happens in the backbone, where the encodings differ. The study swaps
# model.backbone.pos_encoding (and the seed, the schedule and the data root).
_base_ = ['mmseg::_base_/default_runtime.py', '../../../configs/_base_/mmsape_runtime.py']
# mmsape's runtime imports, and the study's PairedDataSeedHook (see study/segmentation.py).
custom_imports = dict(imports=['mmsape.models', 'projects.pe_study.study.hooks', 'mmsape.engine'],
                      allow_failed_imports=False)

data_root = 'data/pe_study'
classes = ('background', 'green_blob', 'cyan_anchor', 'spot_top', 'spot_bottom',
           'above_anchor', 'below_anchor', 'twin', 'single')
palette = [[120, 120, 120], [0, 200, 0], [0, 220, 220], [255, 140, 0], [140, 70, 20],
           [220, 20, 60], [30, 144, 255], [255, 105, 180], [148, 0, 211]]
embed_dims = 96
max_iters = 1500

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
        img_size=(96, 96),
        patch_size=8,
        out_type='featmap',
        out_indices=(3, ),
        final_norm=True,
        pos_encoding=dict(type='mmsape.LearnedAPE')),
    decode_head=dict(
        type='FCNHead',
        in_channels=embed_dims,
        channels=embed_dims,
        num_convs=1,
        kernel_size=1,
        concat_input=False,
        dropout_ratio=0.,
        num_classes=len(classes),
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# Horizontal flips keep every label (the frame and relation classes are vertical).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=True),
    dict(type='mmseg.RandomFlip', prob=0.5),
    dict(type='mmseg.PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmseg.PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, img_suffix='.png',
               seg_map_suffix='.png', reduce_zero_label=True,
               metainfo=dict(classes=classes, palette=palette))
train_dataloader = dict(
    batch_size=8,
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
                 data_prefix=dict(img_path='images/val_pad_1x',
                                  seg_map_path='annotations/val_pad_1x')))
test_dataloader = val_dataloader
val_evaluator = dict(type='mmsape.PerClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='mmsape.DeclaredDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=max_iters // 10),
    dict(type='CosineAnnealingLR', eta_min=0., begin=max_iters // 10, end=max_iters,
         by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters + 1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(_base_.atomic_checkpoint_hook, by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook', draw=False))
randomness = dict(seed=0)
custom_hooks = [dict(type='mmsape.TorchRNGStateHook')]
log_level = 'WARNING'
