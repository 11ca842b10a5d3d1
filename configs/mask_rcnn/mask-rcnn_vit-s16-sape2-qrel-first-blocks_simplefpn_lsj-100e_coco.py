_base_ = [
    './mask-rcnn_vit-s16_simplefpn_lsj-100e_coco.py',
    '../_base_/pos_encodings/sape2_qrel_first_blocks.py',
]
model = dict(backbone=dict(pos_encoding={{_base_.pos_encoding}}))
