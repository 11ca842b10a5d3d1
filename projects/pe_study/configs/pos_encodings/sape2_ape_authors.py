# The SaPE2 authors' configuration: every model of their code has a learned APE, and
# their optimizer decays the SaPE2 tables (it exempts only pos_embed and cls_token).
pos_encoding = [dict(type='mmsape.LearnedAPE'), dict(type='mmsape.SaPE2', decay_tables=True)]
