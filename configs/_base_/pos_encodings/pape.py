# PaPE (Parabolic Position Encoding, arXiv 2602.01418) with the authors' defaults:
# 50 parabolas per head over learned projections of the 1-based (column, row)
# patch coordinates, each query's curvatures and slopes read from its token,
# every block; the class token sits at (0, 0) and gets the bias of a patch there.
# PaPE-RI: rotation_invariant=True. Only `type` is set so that
# --cfg-options model.backbone.pos_encoding.type=... swaps cleanly.
pos_encoding = dict(type='mmsape.PaPE')
