# Query-relative SaPE2 with the lookup bias (sape2_qrel_lookup.py) in the first two
# blocks only; the later blocks attend plainly. The best SaPE2 form of mmsape's study
# (docs/pe_study/README.md: highest mean mIoU at 2x and 3x, padded and resized).
pos_encoding = dict(type='mmsape.SaPE2', count_from='query', bias='lookup', layers=[0, 1])
