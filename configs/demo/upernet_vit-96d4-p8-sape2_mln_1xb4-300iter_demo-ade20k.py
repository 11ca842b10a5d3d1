# Demo: a small SaPE2 ViT + MultiLevelNeck + UPerNet, trained on CPU in minutes on
# the generated ADE20K-format set (python tools/misc/generate_demo_data.py):
# configs/upernet/'s recipe (mmseg's DeiT-S UPerNet) scaled down. vit-96d4-p8 is
# a custom ViT of 96 channels and 4 blocks (3 heads) on 8-pixel patches, not a
# ViT-T/S, trained from its own initialisation with BN heads.
_base_ = ['../upernet/upernet_vit-s16_mln_8xb2-160k_ade20k-512x512.py']
# progress bars, and torch's RNG state in checkpoints so a resumed run repeats an
# uninterrupted one exactly
custom_hooks = _base_.progress_and_rng_hooks

data_root = 'data/demo/ade/ADEChallengeData2016'
# mmseg's ADE20KDataset only accepts the 150 ADE classes: the demo's four
# classes go through BaseSegDataset on the same folder layout.
classes = ('background', 'green_blob', 'upper_blob', 'lower_blob')
palette = [[120, 120, 120], [0, 200, 0], [220, 20, 60], [30, 144, 255]]
embed_dims = 96
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    # batches padded to a multiple of 8, not to the 512 x 512 crop size
    data_preprocessor=dict(size=None, size_divisor=8),
    backbone=dict(
        _delete_=True,
        type='mmsape.PosEncViT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=3,
                  feedforward_channels=2 * embed_dims),
        img_size=(128, 192),
        patch_size=8,
        out_type='featmap',
        out_indices=(0, 1, 2, 3),
        final_norm=False,
        pos_encoding=dict(type='mmsape.SaPE2')),
    neck=dict(in_channels=[embed_dims] * 4, out_channels=embed_dims,
              scales=[2, 1, 0.5, 0.25]),  # patch 8: strides 4, 8, 16, 32
    decode_head=dict(in_channels=[embed_dims] * 4, channels=64, num_classes=len(classes),
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=embed_dims, channels=32, num_classes=len(classes),
                        norm_cfg=norm_cfg))

# Resize instead of random crops: a crop could move a blob pair's members and
# the labels depend on their arrangement. Images keep their aspect ratios
# (1:2 to 2:1), so batches mix sizes and test images are non-square. Types are
# scoped as in configs/upernet/ (see there).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.8, 1.2), keep_ratio=True),
    dict(type='mmseg.RandomFlip', prob=0.5),
    dict(type='mmseg.PhotoMetricDistortion'),
    dict(type='mmseg.PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmseg.Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmseg.PackSegInputs'),
]
# Test-time augmentation (tools/test.py --tta): the test resize with and without a
# horizontal flip (which keeps every label); the default runtime's SegTTAModel
# averages the two predictions.
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='mmseg.Resize', scale=(256, 128), keep_ratio=True)],
            [dict(type='mmseg.RandomFlip', prob=0., direction='horizontal'),
             dict(type='mmseg.RandomFlip', prob=1., direction='horizontal')],
            [dict(type='mmseg.LoadAnnotations', reduce_zero_label=True)],
            [dict(type='mmseg.PackSegInputs')],
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
    _delete_=True,
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training')))
val_dataloader = dict(
    _delete_=True,
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
# mmseg's IoUMetric with each class's IoU among its results (IoU.<class>)
val_evaluator = dict(type='mmsape.PerClassIoUMetric')
test_evaluator = val_evaluator

max_iters = 300
optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
    paramwise_cfg=dict(_delete_=True, custom_keys={'norm': dict(decay_mult=0.)}),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0., power=1.0, begin=30, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=100, max_keep_ckpts=2))
# The batch the learning rate is set for (1 process x 4 images).
auto_scale_lr = dict(enable=False, base_batch_size=4)
randomness = dict(seed=0)
