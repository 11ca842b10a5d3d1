# CPVT: one 3x3 depthwise PEG after the first block; padding is masked out.
pos_encoding = dict(type='mmsape.PEG', kernel_size=3, after_blocks=(0, ))
