# 2D RoPE with fixed axial frequencies (RoPE-ViT's RoPE-Axial).
pos_encoding = dict(type='mmsape.RoPE2D', mode='axial')
