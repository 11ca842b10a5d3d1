# SaPE2 as published, with the defaults of docs/method.md#8-sape-published (M=10
# positions per axis, query form, gate scaling, + sign, every layer). Only `type`
# is set so that --cfg-options model.backbone.pos_encoding.type=... swaps cleanly.
pos_encoding = dict(type='mmsape.SaPE2')
