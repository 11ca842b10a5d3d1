# LookHere (Fuller et al., NeurIPS 2024): heads restricted to fixed 2D directions
# plus a distance penalty, computed from the grid. The released LH-180 settings:
# half-planes up / down / left / right and along the diagonals (plus four heads
# that see everything, at 12 heads), global slope 2, layer slopes 1.5 -> 0.5.
# ViT-S's 6 heads take the first six of the 12-head layout, as the authors' code.
# Other variants: variant='LH-90' or 'LH-45'.
pos_encoding = dict(type='mmsape.LookHere', variant='LH-180', global_slope=2.,
                    layer_slopes=(1.5, .5))
