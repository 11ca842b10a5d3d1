# 1D CoPE over the raster order of the patches (the SaPE2 paper's strongest non-2D baseline).
pos_encoding = dict(type='mmsape.CoPE1D')
