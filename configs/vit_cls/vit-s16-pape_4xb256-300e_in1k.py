_base_ = [
    './vit-s16_4xb256-300e_in1k.py',
    '../_base_/pos_encodings/pape.py',
]
model = dict(backbone=dict(pos_encoding={{_base_.pos_encoding}}))
