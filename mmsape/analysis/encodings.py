"""The encodings every comparison covers, as backbone settings."""
from typing import Dict, Tuple

#: name -> (``pos_encoding`` config, extra ``PosEncViT`` options). The order is
#: the order of report tables.
COMPARED_ENCODINGS: Dict[str, Tuple[object, dict]] = {
    'APE': (dict(type='LearnedAPE'), {}),
    'sin-cos': (dict(type='SinCos2DPositionEncoding'), {}),
    'RoPE axial': (dict(type='RoPE2D', mode='axial'), {}),
    'RoPE mixed': (dict(type='RoPE2D', mode='mixed'), {}),
    'CoPE': (dict(type='CoPE1D'), {}),
    'PEG': (dict(type='PEG'), {}),
    'PEG+GAP': (dict(type='PEG'), dict(with_cls_token=False, out_type='avg_featmap')),
    'SaPE2 query': (dict(type='SaPE2', embed_with='query'), {}),
    'SaPE2 key': (dict(type='SaPE2', embed_with='key'), {}),
    'SaPE2+APE': ([dict(type='LearnedAPE'), dict(type='SaPE2')], {}),
    'none': (dict(type='NoPositionEncoding'), {}),
}
