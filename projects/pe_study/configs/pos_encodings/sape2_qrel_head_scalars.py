# Design sweep: query-relative lookup whose tables hold one scalar per head and
# position (a contextual relative-position bias) instead of u_i . e[t].
pos_encoding = dict(type='mmsape.SaPE2', count_from='query', bias='lookup',
                    table_values='head_scalars')
