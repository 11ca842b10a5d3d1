# Fixed 2D sin-cos absolute embedding (MAE / MoCo v3), computed for each grid.
pos_encoding = dict(type='mmsape.SinCos2DPositionEncoding')
