# Learned absolute position embedding, bicubic-resampled to each grid (baseline).
pos_encoding = dict(type='mmsape.LearnedAPE')
