"""Load ViTs trained with the SaPE² authors' code into :class:`PosEncViT`.

The authors' DeiT-style ViT (``cope_vit_models`` of their ``models_cope_2d.py``)
names its tensors as timm / DeiT do (``cls_token``, ``pos_embed`` including the
class-token slot, ``patch_embed.proj``, ``blocks.{i}.attn.qkv`` ...), except the
SaPE² tables: per block i, ``blocks.{i}.attn.cope.cope_x.pos_emb`` (read along
rows) and ``...cope_y.pos_emb`` (along columns), each a ``(1, head_dim, M)``
parameter whose column t is ``e[t]``. Their block class also holds parameters
that its forward never uses: the LayerScale factors ``gamma_1`` / ``gamma_2``
(the block adds the attention and MLP outputs unscaled), the per-axis ``w_k``
of a gating variant (``mode=1``, zero otherwise) and, in some versions, the
modules of a wavelet variant (``dwt``). :func:`convert_authors_sape2_state`
turns the tables into :class:`~mmsape.models.SaPE2`'s ``position_tables.<i>``
(``(2, M, head_dim)``) and drops the unused entries; everything else is left
to the ViT key conversion.

Configure the model like theirs: ``[dict(type='LearnedAPE'), dict(type='SaPE2',
num_positions=M, embed_with=...)]`` with the default (published) SaPE² options,
``embed_with='query'`` for models trained with their code up to March 2025 and
``'key'`` for their last version (May 2025), ``patch_size`` / ``arch`` of the
checkpoint, and no LayerScale.
"""
import re
from typing import Dict, List, Optional, Tuple

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


def find_sape2(model: nn.Module) -> Optional[Tuple[str, nn.Module]]:
    """``(name, module)`` of the model's :class:`~mmsape.models.SaPE2`, if any."""
    from mmsape.models.pos_encodings import SaPE2
    for name, module in model.named_modules():
        if isinstance(module, SaPE2):
            return name, module
    return None


def convert_authors_sape2_state(state: Dict[str, Tensor], model: nn.Module) -> Tuple[
        Dict[str, Tensor], List[str]]:
    """Convert the SaPE² tables of an authors' checkpoint for ``model``.

    Args:
        state (dict): The checkpoint's backbone state dict, the authors' keys.
        model (nn.Module): The :class:`~mmsape.models.PosEncViT` to load into;
            its SaPE² must be configured as the authors' model (see the module
            docstring).

    Returns:
        tuple[dict, list[str]]: The state dict with the tables as
        ``<sape2>.position_tables.<i>`` and without the unused parameters, and
        the dropped keys.

    Raises:
        ValueError: When the model has no SaPE², when its options cannot
            reproduce the authors' layer, or when the checkpoint used a variant
            that mmsape does not implement (non-zero ``w_k``).
    """
    found = find_sape2(model)
    if found is None:
        raise ValueError('The checkpoint holds SaPE² tables of the authors\' code '
                         '(blocks.<i>.attn.cope.cope_x.pos_emb), but the model has no SaPE2; '
                         "add dict(type='SaPE2') to its pos_encoding.")
    name, sape = found
    published = dict(count_from='row_end', bias='distance', table_values='embeddings',
                     position_mode='clamp', distance='l2', scale_gates=True,
                     gate_temperature=1., negative_bias=False)
    different = {option: getattr(sape, option) for option, value in published.items()
                 if getattr(sape, option) != value}
    if different:
        raise ValueError(f'The authors\' SaPE² is the published form; the model\'s SaPE2 '
                         f'sets {different}: leave these options at their defaults.')
    converted, dropped, tables = {}, [], {}
    for key, value in state.items():
        table = AUTHORS_TABLE_KEY.match(key)
        if table:
            tables.setdefault(int(table[1]), {})[table[2]] = value
        elif AUTHORS_UNUSED_KEY.match(key):
            if key.endswith('.w_k') and value.abs().max() > 0:
                raise ValueError(f'{key} is not zero: the checkpoint was trained with the '
                                 f'authors\' mode=1 gates (keys projected by w_k), which '
                                 f'mmsape does not implement.')
            dropped.append(key)
        else:
            converted[key] = value
    if sorted(tables) != sorted(sape.layers):
        raise ValueError(f'The checkpoint has SaPE² tables in blocks {sorted(tables)}, the '
                         f'model in {list(sape.layers)}; set the SaPE2 option layers (or '
                         f'the arch) to match.')
    prefix = f'{name}.position_tables' if name else 'position_tables'
    for block, axes in tables.items():
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
        converted[f'{prefix}.{block}'] = torch.stack(stacked).contiguous()
    return converted, sorted(dropped)


__all__ = ['AUTHORS_TABLE_KEY', 'is_authors_sape2_state', 'find_sape2',
           'convert_authors_sape2_state']
