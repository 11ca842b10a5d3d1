# Published SaPE2 reading its tables with the key, as the authors' last commit (May 2025).
pos_encoding = dict(type='mmsape.SaPE2', embed_with='key')
