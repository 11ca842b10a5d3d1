# The demo with the study's best SaPE² form (docs/pe_study/README.md; sape2_qrel_first_blocks.py).
_base_ = [
    './mask-rcnn_vit-96d4-p8-sape2_simplefpn_1xb4-800iter_demo-coco.py',
    '../_base_/pos_encodings/sape2_qrel_first_blocks.py',
]
model = dict(backbone=dict(pos_encoding={{_base_.pos_encoding}}))
