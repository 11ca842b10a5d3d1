_base_ = [
    './upernet_vit-s16_mln_8xb2-160k_ade20k-512x512.py',
    '../_base_/pos_encodings/sape2_qrel_first_blocks.py',
]
model = dict(backbone=dict(pos_encoding={{_base_.pos_encoding}}))
