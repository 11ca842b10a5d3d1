# SaPE2 as the reference decides (M=10, query form, gate scaling, + sign), in every layer.
pos_encoding = dict(type='mmsape.SaPE2', num_positions=10, embed_with='query')
