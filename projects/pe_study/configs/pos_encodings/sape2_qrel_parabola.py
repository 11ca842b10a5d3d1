# Design sweep: query-relative counts read by a parabola, PaPE's form, instead of a
# table: z_i(r) = -softplus(u_i . w_a) r^2 + (u_i . w_b) r (docs/method.md).
pos_encoding = dict(type='mmsape.SaPE2', count_from='query', bias='lookup',
                    table_values='parabola')
