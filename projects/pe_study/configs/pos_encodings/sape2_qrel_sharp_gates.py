# Design sweep: query-relative lookup with sharper gates, sigmoid(q.k / (sqrt(d) T)), T=0.5.
pos_encoding = dict(type='mmsape.SaPE2', count_from='query', bias='lookup',
                    gate_temperature=0.5)
