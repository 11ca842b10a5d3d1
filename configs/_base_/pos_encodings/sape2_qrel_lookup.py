# Query-relative SaPE2 (mmsape's extension, docs/method.md): gated counts between the
# query and each column / row, signed by the side, read as a lookup bias s^x_i[x_n] +
# s^y_i[y_n] (CoPE's logit form in 2D). Never builds an N x N tensor.
pos_encoding = dict(type='mmsape.SaPE2', count_from='query', bias='lookup')
