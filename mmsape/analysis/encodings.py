"""The encodings every comparison covers, as backbone settings."""
from typing import Dict, List, Tuple

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


def encoding_components(name: str) -> List[dict]:
    """The ``pos_encoding`` configs a row combines (one for a single encoding),
    each with its ``type`` stripped of any scope (``'mmsape.PEG'`` -> ``'PEG'``)."""
    cfg = COMPARED_ENCODINGS[name][0]
    return [dict(part, type=part['type'].rsplit('.', 1)[-1])
            for part in (cfg if isinstance(cfg, (list, tuple)) else [cfg])]


def is_query_relative_sape2(name: str) -> bool:
    """Whether a row is query-relative SaPE² alone or with PEG (nothing else):
    the encodings issue 12's goal is about."""
    parts = encoding_components(name)
    sape = [p for p in parts if p['type'] == 'SaPE2' and p.get('count_from') == 'query']
    return bool(sape) and all(p['type'] in ('SaPE2', 'PEG') for p in parts) and \
        len(sape) == sum(p['type'] == 'SaPE2' for p in parts)


def uses_sape2(name: str) -> bool:
    """Whether a row contains SaPE² in any form."""
    return any(part['type'] == 'SaPE2' for part in encoding_components(name))
