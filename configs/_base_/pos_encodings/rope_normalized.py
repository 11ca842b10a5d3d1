# 2D RoPE on coordinates normalised to [-1, 1] per axis (patch centres), as DINOv3's
# released models: period base 100, 'separate' normalisation, and in training a
# global log-uniform rescale of the coordinates in [1/2, 2] (no shift, no jitter).
pos_encoding = dict(type='mmsape.RoPE2D', normalize_coords='separate', theta=100.,
                    rescale_coords=2.)
