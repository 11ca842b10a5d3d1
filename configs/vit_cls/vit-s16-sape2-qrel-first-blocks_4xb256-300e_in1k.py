_base_ = [
    './vit-s16_4xb256-300e_in1k.py',
    '../_base_/pos_encodings/sape2_qrel_first_blocks.py',
]
model = dict(backbone=dict(pos_encoding={{_base_.pos_encoding}}))
