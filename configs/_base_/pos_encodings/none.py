# No position information at all (lower bound).
pos_encoding = dict(type='mmsape.NoPositionEncoding')
