# Design sweep: the published count (from each column to the row's end) read as a
# lookup bias s^x_i[x_n] + s^y_i[y_n] instead of the distance ||s_i - s_n||.
pos_encoding = dict(type='mmsape.SaPE2', count_from='row_end', bias='lookup')
