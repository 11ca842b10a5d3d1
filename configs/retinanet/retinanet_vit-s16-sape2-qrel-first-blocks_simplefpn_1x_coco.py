_base_ = [
    './retinanet_vit-s16_simplefpn_1x_coco.py',
    '../_base_/pos_encodings/sape2_qrel_first_blocks.py',
]
model = dict(backbone=dict(pos_encoding={{_base_.pos_encoding}}))
