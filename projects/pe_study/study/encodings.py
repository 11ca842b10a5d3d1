"""The study's rows: which position encodings it trains, read from config files.

Every row names config files that set ``pos_encoding``: the library's
``configs/_base_/pos_encodings/<name>.py`` (what users put in their configs), or,
for variants only the study trains, ``projects/pe_study/configs/pos_encodings/``.
A row of several files stacks their encodings in that order (e.g. query-relative
SaPE² then PEG), the way a config's ``pos_encoding`` list does.
"""
import os.path as osp
from typing import Dict, List, Sequence, Tuple

from mmengine.config import Config

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
LIBRARY_DIR = osp.join(REPO_ROOT, 'configs', '_base_', 'pos_encodings')
STUDY_DIR = osp.join(REPO_ROOT, 'projects', 'pe_study', 'configs', 'pos_encodings')

#: Row name -> (config files, extra ``PosEncViT`` options). The order is the
#: order of the report's tables.
ROWS: Dict[str, Tuple[Tuple[str, ...], dict]] = {
    # The baselines the study's goal names, then the reference without position.
    'PEG': (('peg', ), {}),
    'APE': (('ape', ), {}),
    'RoPE mixed': (('rope', ), {}),
    'RoPE normalised': (('rope_normalized', ), {}),
    'LookHere': (('lookhere', ), {}),
    'PaPE': (('pape', ), {}),
    'none': (('none', ), {}),
    # SaPE² as published, and mmsape's query-relative forms.
    'SaPE2 published': (('sape2', ), {}),
    'SaPE2 qrel lookup': (('sape2_qrel_lookup', ), {}),
    'SaPE2 qrel distance': (('sape2_qrel_distance', ), {}),
    'SaPE2 qrel lookup+PEG': (('sape2_qrel_lookup', 'peg'), {}),
    'SaPE2 qrel distance+PEG': (('sape2_qrel_distance', 'peg'), {}),
    # The design sweep: the other forms (projects/pe_study/configs/pos_encodings/).
    'SaPE2 row-end lookup': (('sape2_row_end_lookup', ), {}),
    'SaPE2 qrel lookup, head scalars': (('sape2_qrel_head_scalars', ), {}),
    'SaPE2 qrel lookup, head scalars+PEG': (('sape2_qrel_head_scalars', 'peg'), {}),
    'SaPE2 qrel lookup, sharp gates': (('sape2_qrel_sharp_gates', ), {}),
    'SaPE2 qrel lookup, blocks 0-1': (('sape2_qrel_first_blocks', ), {}),
    'SaPE2 qrel parabola': (('sape2_qrel_parabola', ), {}),
    'SaPE2 qrel parabola+PEG': (('sape2_qrel_parabola', 'peg'), {}),
}
#: The rows every decision is about (paired differences to PEG, the goal).
DECISION_ROWS = tuple(list(ROWS)[:12])
#: The SaPE² forms of the design sweep (same protocol and seeds).
SWEEP_ROWS = tuple(list(ROWS)[12:])
#: The baselines the goal names: a SaPE² form must beat every one of them.
GOAL_BASELINES = ('PEG', 'APE', 'RoPE mixed', 'RoPE normalised', 'LookHere', 'PaPE')
#: The reference of the power table: every decision row's paired difference to it.
REFERENCE_ROW = 'PEG'


def config_path(name: str) -> str:
    """The file that defines encoding ``name``: the library's, else the study's."""
    for folder in (LIBRARY_DIR, STUDY_DIR):
        path = osp.join(folder, f'{name}.py')
        if osp.isfile(path):
            return path
    raise FileNotFoundError(f'No pos_encoding config {name!r} in {LIBRARY_DIR} or {STUDY_DIR}.')


def read_pos_encoding(name: str) -> List[dict]:
    """The ``pos_encoding`` of config file ``name``, as a list of plain dicts."""
    value = Config.fromfile(config_path(name)).to_dict()['pos_encoding']
    return [dict(part) for part in (value if isinstance(value, (list, tuple)) else [value])]


def row_settings(row: str) -> Tuple[object, dict]:
    """``(pos_encoding, extra PosEncViT options)`` of a row: one dict, or a list
    for a stack."""
    files, extra = ROWS[row]
    parts = [part for name in files for part in read_pos_encoding(name)]
    return (parts[0] if len(parts) == 1 else parts), dict(extra)


def encoding_components(row: str) -> List[dict]:
    """The ``pos_encoding`` configs a row combines (one for a single encoding),
    each with its ``type`` stripped of any scope (``'mmsape.PEG'`` -> ``'PEG'``)."""
    files, _ = ROWS[row]
    return [dict(part, type=part['type'].rsplit('.', 1)[-1])
            for name in files for part in read_pos_encoding(name)]


def is_query_relative_sape2(row: str) -> bool:
    """Whether a row is query-relative SaPE² alone or with PEG (nothing else)."""
    parts = encoding_components(row)
    sape = [p for p in parts if p['type'] == 'SaPE2' and p.get('count_from') == 'query']
    return bool(sape) and all(p['type'] in ('SaPE2', 'PEG') for p in parts) and \
        len(sape) == sum(p['type'] == 'SaPE2' for p in parts)


def uses_sape2(row: str) -> bool:
    """Whether a row contains SaPE² in any form."""
    return any(part['type'] == 'SaPE2' for part in encoding_components(row))


def check_rows(rows: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the unknown rows."""
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        raise ValueError(f'Unknown study rows {unknown}; the rows are {list(ROWS)}.')
