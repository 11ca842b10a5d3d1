# The SaPE2 paper's best setting: SaPE2 plus a learned absolute embedding.
pos_encoding = [dict(type='mmsape.LearnedAPE'), dict(type='mmsape.SaPE2')]
