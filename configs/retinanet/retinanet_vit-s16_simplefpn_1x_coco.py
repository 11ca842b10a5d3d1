# A lighter detector: RetinaNet on a ViT-S/16 with window attention and a
# SimpleFPN giving strides 8-128: P3-P5 resampled from the stride-16 map, P6
# and P7 by stride-2 convs on the P5 input as mmdet's RetinaNet makes them from
# C5 (add_extra_convs='on_input'). The retinanet_vit-s16-<encoding>_* files
# change only the position encoding.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../_base_/models/vit-s16_vitdet.py',
]
custom_imports = dict(imports=['mmsape.models', 'mmsape.models.detectors', 'mmsape.engine'],
                      allow_failed_imports=False)
# Checkpoints and the last_checkpoint pointer written atomically, whatever tool runs it.
default_hooks = dict(checkpoint=dict(type='mmsape.AtomicCheckpointHook'))

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

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='mmsape.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # Also no weight decay on what the model declares in no_weight_decay().
    paramwise_cfg=dict(layer_decay_rate=0.7, norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=1.0, norm_type=2))
