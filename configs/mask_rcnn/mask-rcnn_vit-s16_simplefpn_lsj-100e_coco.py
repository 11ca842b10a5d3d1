# ViTDet-style Mask R-CNN with a ViT-S/16 backbone (window attention (14) with
# global blocks 2, 5, 8, 11: configs/_base_/models/vit-s16_vitdet.py),
# SimpleFPN with LayerNorm, 2-conv RPN, 4conv1fc box head with LayerNorm,
# large-scale jitter at 1024, AdamW with layer-wise lr decay 0.7.
# The mask-rcnn_vit-s16-<encoding>_* files change only the position encoding.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::common/lsj-100e_coco-instance.py',
    '../_base_/models/vit-s16_vitdet.py',
]
custom_imports = dict(imports=['mmsape.models', 'mmsape.models.detectors', 'mmsape.engine'],
                      allow_failed_imports=False)
# Checkpoints and the last_checkpoint pointer written atomically, whatever tool runs it.
default_hooks = dict(checkpoint=dict(type='mmsape.AtomicCheckpointHook'))

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

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='mmsape.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    # Also no weight decay on what the model declares in no_weight_decay().
    paramwise_cfg=dict(layer_decay_rate=0.7, norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=None)
