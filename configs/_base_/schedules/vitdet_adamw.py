# ViTDet's optimizer, shared by the detectors: AdamW with layer-wise lr decay 0.7
# (each block's lr is 0.7 times that of the block above it, as ViTDet / BEiT),
# no weight decay on norms and biases, nor on what the model declares in
# no_weight_decay(). It replaces the toolbox's SGD:
#     optim_wrapper = dict(_base_.vitdet_optim_wrapper, _delete_=True)
vitdet_optim_wrapper = dict(
    type='OptimWrapper',
    constructor='mmsape.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(layer_decay_rate=0.7, norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=None)
