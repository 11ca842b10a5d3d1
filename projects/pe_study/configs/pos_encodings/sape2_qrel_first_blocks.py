# Design sweep: query-relative lookup in the first two blocks only (where in the network
# it acts); the later blocks attend plainly.
pos_encoding = dict(type='mmsape.SaPE2', count_from='query', bias='lookup', layers=[0, 1])
