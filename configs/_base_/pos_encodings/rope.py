# 2D RoPE with RoPE-ViT's learnable mixed frequencies.
pos_encoding = dict(type='mmsape.RoPE2D', mode='mixed')
