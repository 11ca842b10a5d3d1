_base_ = ['./vit-s4_1xb128-400e_cifar10.py']
# The paper's best setting, SaPE2 + APE, with the authors' weight decay: their
# optimizer excludes only pos_embed and cls_token, so the SaPE2 tables are
# decayed and the APE table is not.
model = dict(backbone=dict(pos_encoding=[
    dict(type='mmsape.LearnedAPE'),
    dict(type='mmsape.SaPE2', decay_tables=True),
]))
