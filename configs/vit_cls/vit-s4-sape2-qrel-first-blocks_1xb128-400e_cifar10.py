_base_ = [
    './vit-s4_1xb128-400e_cifar10.py',
    '../_base_/pos_encodings/sape2_qrel_first_blocks.py',
]
model = dict(backbone=dict(pos_encoding={{_base_.pos_encoding}}))
