"""The SaPE² authors' checkpoint layout, converted for :class:`~.sape2.SaPE2`.

ViTs trained with the SaPE² authors' code load into :class:`PosEncViT` through the
backbone's load hook, which asks its encodings to convert their own keys
(:meth:`~.base.BasePositionEncoding.convert_checkpoint_keys`); SaPE2 answers
with :func:`convert_authors_sape2_tables`.

The authors' DeiT-style ViT (``cope_vit_models`` of their ``models_cope_2d.py``)
names its tensors as timm / DeiT do (``cls_token``, ``pos_embed`` including the
class-token slot, ``patch_embed.proj``, ``blocks.{i}.attn.qkv`` ...), except the
SaPE² tables: per block i, ``blocks.{i}.attn.cope.cope_x.pos_emb`` (read along
rows) and ``...cope_y.pos_emb`` (along columns), each a ``(1, head_dim, M)``
parameter whose column t is ``e[t]``. Their block class also holds parameters
that its forward never uses: the LayerScale factors ``gamma_1`` / ``gamma_2``
(the block adds the attention and MLP outputs unscaled), the per-axis ``w_k``
of a gating variant (``mode=1``, zero otherwise) and, in some versions, the
modules of a wavelet variant (``dwt``). :func:`convert_authors_sape2_tables`
turns the tables into :class:`~.sape2.SaPE2`'s ``position_tables.<i>``
(``(2, M, head_dim)``) and drops the unused entries; everything else is left
to the ViT key conversion.

Configure the model like theirs: ``[dict(type='LearnedAPE'), dict(type='SaPE2',
num_positions=M, embed_with=...)]`` with the default (published) SaPE² options,
``embed_with='query'`` for models trained with their code up to March 2025 and
``'key'`` for their last version (May 2025), ``patch_size`` / ``arch`` of the
checkpoint, and no LayerScale.
"""
import re
from typing import Dict, List

import torch
from torch import Tensor, nn

#: Per-block tables of the authors' code: block, axis.
AUTHORS_TABLE_KEY = re.compile(r'^blocks\.(\d+)\.attn\.cope\.cope_([xy])\.pos_emb$')
#: Parameters of the authors' blocks that their SaPE² forward never uses.
AUTHORS_UNUSED_KEY = re.compile(
    r'^blocks\.\d+\.(gamma_[12]|attn\.cope\.(cope_[xy]\.w_k|embed_dwt_[xy]\..+|norm\..+))$')


def is_authors_sape2_state(state: Dict[str, Tensor]) -> bool:
    """Whether a (backbone) state dict comes from the SaPE² authors' code."""
    return any(AUTHORS_TABLE_KEY.match(key) for key in state)


def convert_authors_sape2_tables(sape: nn.Module, state: Dict[str, Tensor],
                                 prefix: str) -> List[str]:
    """Give the SaPE² tables of an authors' checkpoint ``sape``'s names, in place.

    Args:
        sape (SaPE2): The encoding to load into; it must be configured as the
            authors' model (see the module docstring).
        state (dict): The checkpoint's backbone weights, the authors' keys.
        prefix (str): Where ``sape`` sits in the backbone, e.g.
            ``'pos_encoding.encodings.1.'``.

    Returns:
        list[str]: The dropped keys (parameters the authors' forward never
        uses); the tables are now ``<prefix>position_tables.<i>``.

    Raises:
        ValueError: When ``sape``'s options cannot reproduce the authors'
            layer, or when the checkpoint used a variant that mmsape does not
            implement (non-zero ``w_k``).
    """
    published = dict(count_from='row_end', bias='distance', table_values='embeddings',
                     position_mode='clamp', distance='l2', scale_gates=True,
                     gate_temperature=1., negative_bias=False)
    different = {option: getattr(sape, option) for option, value in published.items()
                 if getattr(sape, option) != value}
    if different:
        raise ValueError(f'The authors\' SaPE² is the published form; the model\'s SaPE2 '
                         f'sets {different}: leave these options at their defaults.')
    for key, value in state.items():
        if key.endswith('.w_k') and AUTHORS_UNUSED_KEY.match(key) and value.abs().max() > 0:
            raise ValueError(f'{key} is not zero: the checkpoint was trained with the '
                             f'authors\' mode=1 gates (keys projected by w_k), which '
                             f'mmsape does not implement.')
    axes_of_block: Dict[int, Dict[str, Tensor]] = {}
    for key, value in state.items():
        table = AUTHORS_TABLE_KEY.match(key)
        if table:
            axes_of_block.setdefault(int(table[1]), {})[table[2]] = value
    if sorted(axes_of_block) != sorted(sape.layers):
        raise ValueError(f'The checkpoint has SaPE² tables in blocks {sorted(axes_of_block)}, '
                         f'the model in {list(sape.layers)}; set the SaPE2 option layers (or '
                         f'the arch) to match.')
    tables = {}
    for block, axes in axes_of_block.items():
        if set(axes) != {'x', 'y'}:
            raise ValueError(f'Block {block} of the checkpoint lacks the table of axis '
                             f'{({"x", "y"} - set(axes)).pop()}.')
        stacked = [axes[axis][0].transpose(0, 1) for axis in 'xy']  # (M, head_dim) each
        expected = (sape.num_positions, sape.head_dims)
        if tuple(stacked[0].shape) != expected:
            raise ValueError(
                f'The checkpoint\'s tables hold {stacked[0].shape[0]} positions of width '
                f'{stacked[0].shape[1]} (npos_max, head_dim); the model\'s SaPE2 has '
                f'num_positions={expected[0]} and head_dim={expected[1]}: set '
                f'num_positions={stacked[0].shape[0]} (and the arch) to match.')
        tables[f'{prefix}position_tables.{block}'] = torch.stack(stacked).contiguous()
    # Every check passed: change the state dict (not before, so that a refused
    # checkpoint is left as it was).
    dropped = sorted(key for key in state if AUTHORS_UNUSED_KEY.match(key))
    for key in dropped + [key for key in state if AUTHORS_TABLE_KEY.match(key)]:
        del state[key]
    state.update(tables)
    return dropped


__all__ = ['AUTHORS_TABLE_KEY', 'is_authors_sape2_state', 'convert_authors_sape2_tables']
