# DeiT-S recipe (mmpretrain's: AdamW, cosine, mixup + cutmix, label smoothing,
# RandAugment, random erasing; reported 79.9 / 80.69 top-1) with mmsape's ViT.
# The vit-s16-<encoding>_* files change only the position encoding.
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']
custom_imports = dict(imports=['mmsape.models'], allow_failed_imports=False)
# Checkpoints and the last_checkpoint pointer written atomically, whatever tool runs it.
default_hooks = dict(checkpoint=dict(type='mmsape.AtomicCheckpointHook'))

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsape.PosEncViT',
        arch='deit-small',
        img_size=224,
        patch_size=16,
        out_type='cls_token',
        pos_encoding=dict(type='mmsape.LearnedAPE')))

# Parameters the model declares in no_weight_decay() (position tables, class
# token) get no weight decay: the constructor reads them.
optim_wrapper = dict(constructor='mmsape.DeclaredDecayOptimWrapperConstructor')
