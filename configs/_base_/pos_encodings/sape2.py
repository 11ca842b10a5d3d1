# SaPE2 with the reference's decided defaults (M=10 positions per axis, query
# form, gate scaling, + sign, every layer). Only `type` is set so that
# --cfg-options model.backbone.pos_encoding.type=... swaps cleanly.
pos_encoding = dict(type='mmsape.SaPE2')
