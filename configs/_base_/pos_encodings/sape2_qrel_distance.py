# Query-relative SaPE2 (mmsape's extension, docs/method.md) with the published
# distance bias ||s_i - s_n|| per axis, served by the same exact kernels.
pos_encoding = dict(type='mmsape.SaPE2', count_from='query', bias='distance')
