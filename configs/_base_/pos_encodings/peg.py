# CPVT's PEG with its defaults: one 3x3 depthwise conv after the first block;
# batch padding is masked out.
pos_encoding = dict(type='mmsape.PEG')
