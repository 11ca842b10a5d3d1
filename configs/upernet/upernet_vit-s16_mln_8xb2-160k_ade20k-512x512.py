# ViT-S/16 + MultiLevelNeck + UPerNet on ADE20K: mmseg's DeiT-S recipe (reported
# 43.82 mIoU with its own ViT), with mmsape's ViT and a learned APE. The
# upernet_vit-s16-<encoding>_* files change only model.backbone.pos_encoding.
_base_ = [
    'mmseg::vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/models/vit-s16.py',
    '../_base_/mmsape_runtime.py',
]
default_hooks = dict(checkpoint=_base_.atomic_checkpoint_hook)

model = dict(
    # mmseg passes `pretrained` to its own ViT; mmsape's loads through init_cfg.
    pretrained=None,
    backbone=dict(
        _base_.vit_s16_backbone,
        _delete_=True,
        img_size=512,
        out_type='featmap',
        out_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        final_norm=False,
        init_cfg=_base_.deit_s16_pretrained))

optim_wrapper = dict(constructor=_base_.declared_decay_constructor)
# The batch the learning rate is set for (8 GPUs x 2 images); tools/train.py
# --auto-scale-lr scales the lr to the batch a run trains with.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# mmseg's ADE20K pipelines with their types in mmseg's scope ('mmseg.X'), so
# that they build the same whichever toolbox's scope is current (mmseg's
# inference_model builds them in the caller's). mmcv's own transforms
# (LoadImageFromFile, RandomResize, TestTimeAug), the same class in every
# scope, keep their bare names, and so does the test pipeline's LoadAnnotations:
# the toolboxes' inferencers find those two by name (mmseg's drop the latter).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='mmseg.RandomCrop', crop_size=_base_.crop_size, cat_max_ratio=0.75),
    dict(type='mmseg.RandomFlip', prob=0.5),
    dict(type='mmseg.PhotoMetricDistortion'),
    dict(type='mmseg.PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='mmseg.Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='mmseg.PackSegInputs'),
]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='mmseg.Resize', scale_factor=r, keep_ratio=True)
             for r in _base_.img_ratios],
            [dict(type='mmseg.RandomFlip', prob=0., direction='horizontal'),
             dict(type='mmseg.RandomFlip', prob=1., direction='horizontal')],
            [dict(type='mmseg.LoadAnnotations')],
            [dict(type='mmseg.PackSegInputs')],
        ]),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
