"""The encodings every comparison covers, as backbone settings."""
from typing import Dict, List, Tuple

_QUERY_LOOKUP = dict(type='SaPE2', count_from='query', bias='lookup')
_QUERY_DISTANCE = dict(type='SaPE2', count_from='query', bias='distance')
_APE, _PEG = dict(type='LearnedAPE'), dict(type='PEG')

#: name -> (``pos_encoding`` config, extra ``PosEncViT`` options). The order is
#: the order of report tables.
COMPARED_ENCODINGS: Dict[str, Tuple[object, dict]] = {
    'APE': (_APE, {}),
    'sin-cos': (dict(type='SinCos2DPositionEncoding'), {}),
    'RoPE axial': (dict(type='RoPE2D', mode='axial'), {}),
    'RoPE mixed': (dict(type='RoPE2D', mode='mixed'), {}),
    # DINOv3's released recipe (configs/_base_/pos_encodings/rope_normalized.py).
    'RoPE normalised': (dict(type='RoPE2D', normalize_coords='separate', theta=100.,
                             rescale_coords=2.), {}),
    # LH-180, the paper's default (configs/_base_/pos_encodings/lookhere.py).
    'LookHere': (dict(type='LookHere', variant='LH-180', global_slope=2.,
                      layer_slopes=(1.5, .5)), {}),
    'CoPE': (dict(type='CoPE1D'), {}),
    'PEG': (_PEG, {}),
    'PEG+GAP': (_PEG, dict(with_cls_token=False, out_type='avg_featmap')),
    'SaPE2 query': (dict(type='SaPE2', embed_with='query'), {}),
    'SaPE2 key': (dict(type='SaPE2', embed_with='key'), {}),
    # The authors' configuration: every model of their code has a learned APE,
    # and their optimizer decays the SaPE² tables (it exempts pos_embed, cls_token).
    'SaPE2+APE': ([_APE, dict(type='SaPE2', decay_tables=True)], {}),
    # Query-relative SaPE² (issue 12), SaPE2's defaults for each bias form.
    'SaPE2 qrel lookup': (_QUERY_LOOKUP, {}),
    'SaPE2 qrel distance': (_QUERY_DISTANCE, {}),
    'SaPE2 qrel lookup+APE': ([_APE, _QUERY_LOOKUP], {}),
    'SaPE2 qrel distance+APE': ([_APE, _QUERY_DISTANCE], {}),
    'SaPE2 qrel lookup+PEG': ([_QUERY_LOOKUP, _PEG], {}),
    'SaPE2 qrel distance+PEG': ([_QUERY_DISTANCE, _PEG], {}),
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
