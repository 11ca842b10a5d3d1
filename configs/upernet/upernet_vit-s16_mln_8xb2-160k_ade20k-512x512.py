# ViT-S/16 + MultiLevelNeck + UPerNet on ADE20K: mmseg's DeiT-S recipe (reported
# 43.82 mIoU with its own ViT), with mmsape's ViT and a learned APE. The
# upernet_vit-s16-<encoding>_* files change only model.backbone.pos_encoding.
_base_ = [
    'mmseg::vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py',
]
custom_imports = dict(imports=['mmsape.models'], allow_failed_imports=False)
# Checkpoints and the last_checkpoint pointer written atomically, whatever tool runs it.
default_hooks = dict(checkpoint=dict(type='mmsape.AtomicCheckpointHook'))

model = dict(
    # mmseg passes `pretrained` to its own ViT; mmsape's loads through init_cfg.
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsape.PosEncViT',
        arch='deit-small',
        img_size=512,
        patch_size=16,
        out_type='featmap',
        out_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        final_norm=False,
        pos_encoding=dict(type='mmsape.LearnedAPE'),
        init_cfg=dict(type='Pretrained',
                      checkpoint='pretrain/deit_small_patch16_224-cd65a155.pth')))

# No weight decay on the parameters the model declares in no_weight_decay()
# (APE table, PEG conv, SaPE2 / CoPE tables, RoPE frequencies, class token), as
# each paper does for its own: the constructor reads them.
optim_wrapper = dict(constructor='mmsape.DeclaredDecayOptimWrapperConstructor')
