# ViTDet-style Mask R-CNN with a ViT-S/16 backbone (window attention (14) with
# global blocks 2, 5, 8, 11: configs/_base_/models/vit-s16_vitdet.py),
# SimpleFPN with LayerNorm, 2-conv RPN, 4conv1fc box head with LayerNorm,
# large-scale jitter at 1024, AdamW with layer-wise lr decay 0.7.
# The mask-rcnn_vit-s16-<encoding>_* files change only the position encoding.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::common/lsj-100e_coco-instance.py',
    '../_base_/models/vit-s16_vitdet.py',
    '../_base_/schedules/vitdet_adamw.py',
    '../_base_/mmsape_runtime.py',
]
default_hooks = dict(checkpoint=_base_.atomic_checkpoint_hook)

image_size = (1024, 1024)
norm_cfg = dict(type='mmsape.LN2d', requires_grad=True)
model = dict(
    # mmdet's Mask R-CNN, with the batch padding mask passed to the backbone (PEG)
    type='mmsape.PaddingAwareMaskRCNN',
    data_preprocessor=dict(
        pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]),
    backbone=dict(_base_.vitdet_backbone, _delete_=True, img_size=image_size),
    neck=dict(
        _delete_=True,
        type='mmsape.SimpleFPN',
        in_channels=384,
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        num_outs=5),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256,
                       norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

# mmdet's large-scale jitter pipelines with their types in mmdet's scope
# ('mmdet.X'), so that they build the same whichever toolbox's scope is current
# (mmdet's inference_detector builds them in the caller's). mmcv's own
# transforms (LoadImageFromFile, RandomResize), the same class in every scope,
# keep their bare names; the toolboxes' inferencers find LoadImageFromFile by it.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='mmdet.RandomCrop', crop_type='absolute_range', crop_size=image_size,
         recompute_bbox=True, allow_negative_crop=True),
    dict(type='mmdet.FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='mmdet.RandomFlip', prob=0.5),
    dict(type='mmdet.PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='mmdet.Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(dataset=dict(pipeline=train_pipeline)))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))

optim_wrapper = dict(_base_.vitdet_optim_wrapper, _delete_=True)
# The batch the learning rate is set for: ViTDet's 64 images (mmdet's LSJ
# recipe: 32 GPUs x 2); tools/train.py --auto-scale-lr scales the lr to the
# batch a run trains with.
auto_scale_lr = dict(enable=False, base_batch_size=64)
