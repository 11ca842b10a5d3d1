"""Convert timm / DeiT / mmpretrain / mmseg ViT checkpoints to :class:`PosEncViT`'s names.

:class:`~mmsape.models.PosEncViT` calls :func:`convert_vit_state_dict` from a
load-state-dict pre-hook (as mmpretrain's ViT resizes its position table), so every
way of loading weights goes through it: ``init_cfg=dict(type='Pretrained', ...)``
(a path or a URL, with or without ``prefix``), ``load_from`` of a whole detector or
segmentor, ``resume`` and plain ``load_state_dict``. mmsape's own checkpoints have
nothing to convert and pass through unchanged.

What the conversion does:

* asks the model's position encoding (each one of a stack) to convert its own
  keys (``BasePositionEncoding.convert_checkpoint_keys``): the learned APE takes
  the ``pos_embed`` table, which its own load hook resamples to the configured
  grid (with the interpolation the APE is configured with), and SaPE² converts
  the tables of checkpoints trained with the SaPE² authors' code; a checkpoint
  in a layout only an encoding the model lacks can convert is refused, naming
  that encoding;
* renames mmpretrain / mmseg keys (``layers.<i>.ln1`` ...) to mmsape's timm-like
  ones;
* drops what a backbone never has (classifier heads, DeiT's distillation token, a
  class token the model does not use) and, for a whole classifier / detector /
  segmentor file given where a backbone file is expected, everything outside
  ``backbone.``;
* fills the parameters the source model does not have with the values that make
  the model compute what the source computed (see :data:`NEUTRAL_FILLS`);
* leaves the loader's own reporting in place and adds one table of missing,
  unexpected and resized keys (:func:`format_load_report`).
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from mmengine.logging import print_log
from timm.layers import LayerScale
from torch import Tensor, nn

from mmsape.models.pos_encodings.base import BasePositionEncoding
from mmsape.models.pos_encodings.builder import registered_pos_encodings
from mmsape.registry import POS_ENCODINGS
from mmsape.utils import format_state_dict_report, load_checkpoint_safely

Shape = Tuple[int, ...]

#: (pattern, replacement) applied in order to every key, after prefix removal.
#: timm and DeiT keys already match mmsape's names, except the position table
#: (which the learned APE takes) and the register tokens.
KEY_RULES: List[Tuple[str, str]] = [
    (r'^patch_embed\.projection\.', 'patch_embed.proj.'),            # mmpretrain, mmseg
    (r'^layers\.(\d+)\.ln1\.', r'blocks.\1.norm1.'),
    (r'^layers\.(\d+)\.ln2\.', r'blocks.\1.norm2.'),
    (r'^layers\.(\d+)\.attn\.attn\.in_proj_', r'blocks.\1.attn.qkv.'),    # mmseg (nn.MHA)
    (r'^layers\.(\d+)\.attn\.attn\.out_proj\.', r'blocks.\1.attn.proj.'),
    (r'^layers\.(\d+)\.attn\.gamma1\.weight$', r'blocks.\1.ls1.gamma'),   # mmpretrain
    (r'^layers\.(\d+)\.ffn\.gamma2\.weight$', r'blocks.\1.ls2.gamma'),
    (r'^layers\.(\d+)\.attn\.', r'blocks.\1.attn.'),
    (r'^layers\.(\d+)\.ffn\.layers\.0\.0\.', r'blocks.\1.mlp.fc1.'),
    (r'^layers\.(\d+)\.ffn\.layers\.1\.', r'blocks.\1.mlp.fc2.'),
    (r'^ln1\.', 'norm.'),                                              # final norm
    (r'^reg_token$', 'register_tokens'),                               # timm
]
#: Classifier / distillation parts that a backbone never has.
IGNORED_KEYS = re.compile(r'^(head|head_dist|fc_norm|dist_token|pre_logits)\b')
#: Dicts that wrap the weights in a checkpoint file: MMEngine, DeiT / timm
#: training scripts, DataParallel.
CHECKPOINT_WRAPPERS = ('state_dict', 'model', 'module')

#: Parameters a source model may lack because it lacks the layer's option, and
#: the value that makes mmsape's layer compute what the source's did:
#:
#: * a bias (``nn.Linear`` / ``nn.Conv2d``) whose weight the checkpoint has: zero.
#:   mmseg's ViT has no patch-embedding bias; timm / mmpretrain ViTs built with
#:   ``qkv_bias=False``, CLIP-style ``pre_norm`` patch embeddings without bias.
#: * LayerScale ``gamma`` of a block the checkpoint has: one (a source without
#:   LayerScale, loaded into ``layer_scale_init_value > 0``).
#:
#: The learned APE fills its own ``prefix_pos_embed`` with zeros when the
#: checkpoint table has no class slot (timm's ``no_embed_class``): the source added
#: no position to its prefix tokens. Parts that cannot be neutralised (a final
#: norm, a class token or a pre-norm the other model lacks) stay missing or
#: unexpected and are reported: build the model with the matching option.
NEUTRAL_FILLS = {nn.Linear: ('bias', 0.), nn.Conv2d: ('bias', 0.), LayerScale: ('gamma', 1.)}


@dataclass
class ViTCheckpointConversion:
    """What converting the keys under ``prefix`` of one state dict did.

    Args:
        prefix (str): Where the backbone sits in the loaded state dict.
        source (str): 'timm' (also DeiT), 'mmpretrain', 'mmseg', 'mmsape', or the
            layout a position encoding recognised (``foreign_checkpoint_source``:
            'sape2-authors' for the SaPE² authors' DeiT-style code).
        backbone_of_whole_model (bool): The keys came from ``backbone.`` of a
            classifier / detector / segmentor checkpoint.
        dropped (list[str]): Keys of parts the model does not have.
        filled (dict[str, float]): Parameters the source lacks, set to the value.
        resized (list[tuple]): ``(key, checkpoint_shape, model_shape)`` of the
            tensors the position encoding resamples (the learned APE's table).
        mismatched (list[tuple]): Other keys whose shapes differ; the loader
            refuses them (MMEngine skips them with a warning, torch raises).
    """
    prefix: str
    source: str
    backbone_of_whole_model: bool = False
    dropped: List[str] = field(default_factory=list)
    filled: Dict[str, float] = field(default_factory=dict)
    resized: List[Tuple[str, Shape, Shape]] = field(default_factory=list)
    mismatched: List[Tuple[str, Shape, Shape]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the checkpoint needed anything beyond a plain load."""
        return (self.source != 'mmsape' or self.backbone_of_whole_model
                or bool(self.dropped or self.filled or self.resized or self.mismatched))

    def report(self, missing_keys: Iterable[str], unexpected_keys: Iterable[str]) -> dict:
        """The load's outcome for this backbone, keys relative to it.

        Args:
            missing_keys (Iterable[str]): The loader's missing keys (whole model).
            unexpected_keys (Iterable[str]): The loader's unexpected keys.

        Returns:
            dict: ``source``, ``whole_model``, ``missing``, ``unexpected`` (dropped
            keys included), ``resized``, ``mismatched`` and ``filled``.
        """
        def own(keys):
            return sorted(key[len(self.prefix):] for key in keys if key.startswith(self.prefix))

        return dict(source=self.source,
                    whole_model=self.backbone_of_whole_model,
                    missing=own(missing_keys),
                    unexpected=sorted(set(own(unexpected_keys)) | set(self.dropped)),
                    resized=list(self.resized),
                    mismatched=list(self.mismatched),
                    filled=dict(self.filled))


def format_load_report(report: dict) -> str:
    """One readable text for :meth:`ViTCheckpointConversion.report`'s dict."""
    whole = ', the backbone of a whole model' if report['whole_model'] else ''
    lines = [f'Loaded ViT weights saved by {report["source"]}{whole} into PosEncViT:',
             format_state_dict_report(missing=report['missing'],
                                      unexpected=report['unexpected'],
                                      resized=report['resized'] + report['mismatched'])]
    if report['filled']:
        lines.append('Absent from the source model, set to the value that reproduces it: '
                     + ', '.join(f'{key}={value:g}'
                                 for key, value in sorted(report['filled'].items())) + '.')
    if report['mismatched']:
        lines.append(f'NOT loaded, the shapes differ (listed as resized above): '
                     f'{", ".join(key for key, *_ in report["mismatched"])}.')
    return '\n'.join(lines)


def unwrap_state_dict(checkpoint: Mapping[str, Any],
                      prefix: Optional[str] = None) -> Dict[str, Any]:
    """The tensor dict inside a checkpoint ('state_dict' / 'model' / 'module' / bare),
    with ``prefix`` (e.g. 'backbone.') removed; when no prefix is given and the
    checkpoint has no patch embedding of its own but a ``backbone.`` one (a whole
    classifier / detector / segmentor), that prefix is removed and the rest dropped.
    The state dict's ``_metadata`` follows the keys."""
    state = _strip_wrappers(checkpoint)
    if prefix is None and _is_whole_model(state):
        prefix = 'backbone.'
    return _strip_prefix(state, prefix) if prefix else state


def _strip_wrappers(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    state = checkpoint
    for wrapper in CHECKPOINT_WRAPPERS:
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if any(key.startswith('module.') for key in state):  # saved from DataParallel
        state = _strip_prefix(state, 'module.', keep_others=True)
    return state


def _strip_prefix(state: Mapping[str, Any], prefix: str,
                  keep_others: bool = False) -> Dict[str, Any]:
    """Keys under ``prefix`` without it (and the others if ``keep_others``); the
    module paths of ``_metadata`` (where the learned APE records a non-square
    table's grid) are moved the same way."""
    stripped = OrderedDict(
        (key[len(prefix):] if key.startswith(prefix) else key, value)
        for key, value in state.items() if keep_others or key.startswith(prefix))
    metadata = getattr(state, '_metadata', None)
    if metadata is not None:
        stripped._metadata = OrderedDict(metadata if keep_others else ())
        stripped._metadata.update(_moved_metadata(metadata, prefix))
    return stripped


def _is_whole_model(state: Mapping[str, Any]) -> bool:
    """A model holding a ViT under ``backbone.`` rather than a ViT itself."""
    return (not any(key.startswith('patch_embed.') for key in state)
            and any(key.startswith('backbone.patch_embed.') for key in state))


def checkpoint_source(keys: Iterable[str]) -> str:
    """Which code base saved ViT weights with these (unprefixed) keys.

    Returns:
        str: 'mmseg', 'mmpretrain' (``layers.<i>`` names), 'timm' (a top-level
        ``pos_embed``, as DeiT) or 'mmsape' (timm-like names, nothing to convert).
    """
    keys = list(keys)
    if any(key.startswith('layers.') for key in keys):
        return ('mmseg' if any(key.endswith('attn.attn.in_proj_weight') for key in keys)
                else 'mmpretrain')
    return 'timm' if 'pos_embed' in keys or 'reg_token' in keys else 'mmsape'


def convert_vit_keys(state: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """Rename keys to mmsape's; return the converted dict and the ignored keys.

    Run after the position encoding converted its keys: a ``pos_embed`` left
    (the model has no learned APE) is ignored.

    Args:
        state (dict): Unprefixed backbone weights.

    Examples:
        >>> import torch
        >>> state = {'layers.0.ln1.weight': torch.ones(2), 'ln1.bias': torch.zeros(2),
        ...          'pos_embed': torch.zeros(1, 5, 2), 'head.weight': torch.zeros(3, 2)}
        >>> converted, ignored = convert_vit_keys(state)
        >>> sorted(converted), ignored
        (['blocks.0.norm1.weight', 'norm.bias'], ['pos_embed', 'head.weight'])
    """
    converted, ignored = {}, []
    for key, value in state.items():
        if IGNORED_KEYS.match(key) or key == 'pos_embed':
            ignored.append(key)
            continue
        for pattern, replacement in KEY_RULES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted, ignored


def foreign_encoding_source(state: Mapping[str, Tensor],
                            encoding: BasePositionEncoding) -> Optional[str]:
    """The layout of a registered position encoding that ``state`` holds, if any
    (e.g. 'sape2-authors'); refused when ``encoding`` has no such part, since
    only that encoding converts it.

    Args:
        state (Mapping[str, Tensor]): Unprefixed backbone weights as saved.
        encoding (BasePositionEncoding): The model's encoding (a stack or one).

    Raises:
        ValueError: The model lacks the encoding, named in the message.
    """
    for name in registered_pos_encodings():
        encoding_cls = POS_ENCODINGS.get(name)
        source = encoding_cls.foreign_checkpoint_source(state)
        if source is None:
            continue
        if not any(isinstance(part, encoding_cls) for part in encoding.modules()):
            raise ValueError(f'The checkpoint holds {name} parameters saved by {source!r}, '
                             f'but the model has no {name}; add dict(type={name!r}) to its '
                             f'pos_encoding.')
        return source
    return None


def convert_vit_state_dict(state_dict: dict, prefix: str,
                           model: nn.Module) -> Optional[ViTCheckpointConversion]:
    """Convert, in place, the keys under ``prefix`` of a state dict being loaded into
    ``model`` (a :class:`PosEncViT`); meant for a load-state-dict pre-hook.

    Args:
        state_dict (dict): The dict handed to the model's ``_load_from_state_dict``.
        prefix (str): The model's prefix in it ('' at the root, 'backbone.' ...).
        model (nn.Module): The backbone the weights are loaded into; its
            ``pos_encoding`` converts its own keys.

    Returns:
        ViTCheckpointConversion | None: What was done; None when the state dict
        holds nothing under ``prefix``.
    """
    local = {key[len(prefix):]: state_dict.pop(key) for key in list(state_dict)
             if key.startswith(prefix)}
    if not local:
        return None
    local = _strip_wrappers(local)
    whole_model = _is_whole_model(local)
    if whole_model:
        local = _strip_prefix(local, 'backbone.')
        metadata = getattr(state_dict, '_metadata', None)
        if metadata is not None:  # the loader reads every module's entry from it
            metadata.update(_moved_metadata(metadata, prefix + 'backbone.', prefix))
    conversion = ViTCheckpointConversion(prefix, checkpoint_source(local),
                                         backbone_of_whole_model=whole_model)

    encoding = model.pos_encoding
    conversion.source = foreign_encoding_source(local, encoding) or conversion.source
    encoding_dropped = encoding.convert_checkpoint_keys(local, 'pos_encoding.')
    converted, conversion.dropped = convert_vit_keys(local)
    conversion.dropped += encoding_dropped
    resampled = {f'pos_encoding.{name}' for name in encoding.resampled_on_load()}
    own = model.state_dict(keep_vars=True)
    if 'cls_token' in converted and 'cls_token' not in own:
        conversion.dropped.append('cls_token')
        del converted['cls_token']
    conversion.filled = _neutral_fills(model, converted)
    for key, value in converted.items():
        if key in own and value.shape != own[key].shape:
            entry = (key, tuple(value.shape), tuple(own[key].shape))
            (conversion.resized if key in resampled else conversion.mismatched).append(entry)
    state_dict.update({prefix + key: value for key, value in converted.items()})
    state_dict.update({prefix + key: torch.full_like(own[key], value).detach()
                       for key, value in conversion.filled.items()})
    return conversion


def _neutral_fills(model: nn.Module, checkpoint: Mapping[str, Tensor]) -> Dict[str, float]:
    """Parameters of ``model`` the checkpoint lacks although it has their layer
    (see :data:`NEUTRAL_FILLS`), with the value that reproduces the source."""
    fills = {}
    for name, module in model.named_modules():
        for layer_type, (param_name, value) in NEUTRAL_FILLS.items():
            if not isinstance(module, layer_type) or getattr(module, param_name, None) is None:
                continue
            key = f'{name}.{param_name}'
            # A bias belongs to its weight; a LayerScale to its block.
            owner = (f'{name}.weight' if param_name == 'bias'
                     else name.rpartition('.')[0] + '.')
            if key not in checkpoint and any(k.startswith(owner) for k in checkpoint):
                fills[key] = value
    return fills


def _moved_metadata(metadata: Mapping[str, dict], old_prefix: str,
                    new_prefix: str = '') -> Dict[str, dict]:
    """The ``_metadata`` entries of the modules under ``old_prefix``, renamed to
    ``new_prefix`` (the learned APE records a non-square table's grid there)."""
    moved = {}
    for name, value in metadata.items():
        path = f'{name}.' if name else ''
        if path.startswith(old_prefix):
            moved[(new_prefix + path[len(old_prefix):]).rstrip('.')] = value
    return moved


def load_vit_pretrained(model: nn.Module, checkpoint: str,
                        prefix: Optional[str] = None) -> dict:
    """Load a ViT checkpoint file into ``model`` (a :class:`PosEncViT`) and report.

    The same as ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``
    for a local file: the weights go through the backbone's load hook and
    MMEngine's non-strict ``load_state_dict`` (tensors whose shapes differ are
    skipped with a warning).

    Args:
        model (nn.Module): The backbone.
        checkpoint (str): Path (``.pth`` loaded with ``weights_only=True``, or
            ``.safetensors``).
        prefix (str, optional): Key prefix of the backbone inside the file, e.g.
            'backbone.' for a whole mmpretrain classifier (found automatically
            when the file has no patch embedding of its own but a 'backbone.' one).

    Returns:
        dict: The report (:meth:`ViTCheckpointConversion.report`).
    """
    from mmengine.runner.checkpoint import load_state_dict
    state = unwrap_state_dict(load_checkpoint_safely(checkpoint), prefix)
    print_log(f'Loading pretrained weights from {checkpoint}', logger='current')
    model.load_report = None
    load_state_dict(model, state, strict=False, logger='current')
    return model.load_report
