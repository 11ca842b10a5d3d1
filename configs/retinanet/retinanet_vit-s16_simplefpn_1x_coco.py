# A lighter detector: RetinaNet on a ViT-S/16 with window attention and a
# SimpleFPN giving strides 8-128: P3-P5 resampled from the stride-16 map, P6
# and P7 by stride-2 convs on the P5 input as mmdet's RetinaNet makes them from
# C5 (add_extra_convs='on_input'). The retinanet_vit-s16-<encoding>_* files
# change only the position encoding.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../_base_/models/vit-s16_vitdet.py',
    '../_base_/schedules/vitdet_adamw.py',
    '../_base_/mmsape_runtime.py',
]
default_hooks = dict(checkpoint=_base_.atomic_checkpoint_hook)

model = dict(
    # mmdet's RetinaNet, with the batch padding mask passed to the backbone (PEG)
    type='mmsape.PaddingAwareRetinaNet',
    backbone=dict(_base_.vitdet_backbone, _delete_=True, img_size=(800, 1333)),
    neck=dict(
        _delete_=True,
        type='mmsape.SimpleFPN',
        in_channels=384,
        out_channels=256,
        scale_factors=(2.0, 1.0, 0.5),
        num_outs=5,
        add_extra_convs='on_input'))

# mmdet's COCO pipelines (and RetinaNet's test-time augmentation) with their
# types in mmdet's scope ('mmdet.X'), so that they build the same whichever
# toolbox's scope is current (mmdet's inference_detector builds them in the
# caller's). mmcv's own transforms (LoadImageFromFile, TestTimeAug), the same
# class in every scope, keep their bare names; the toolboxes' inferencers find
# LoadImageFromFile by it.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='mmdet.LoadAnnotations', with_bbox=True),
    dict(type='mmdet.Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='mmdet.RandomFlip', prob=0.5),
    dict(type='mmdet.PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='mmdet.Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='mmdet.LoadAnnotations', with_bbox=True),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='mmdet.Resize', scale=s, keep_ratio=True) for s in _base_.img_scales],
            [dict(type='mmdet.RandomFlip', prob=1.), dict(type='mmdet.RandomFlip', prob=0.)],
            [dict(type='mmdet.LoadAnnotations', with_bbox=True)],
            [dict(type='mmdet.PackDetInputs',
                  meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                             'flip', 'flip_direction'))],
        ]),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))

optim_wrapper = dict(
    _base_.vitdet_optim_wrapper,
    _delete_=True,
    optimizer=dict(_base_.vitdet_optim_wrapper.optimizer, weight_decay=0.05),
    clip_grad=dict(max_norm=1.0, norm_type=2))
# The batch the learning rate is set for (mmdet's 1x: 8 GPUs x 2 images);
# tools/train.py --auto-scale-lr scales the lr to the batch a run trains with.
auto_scale_lr = dict(enable=False, base_batch_size=16)
