"""Load timm / DeiT / mmpretrain / mmseg ViT weights into :class:`PosEncViT`.

Checkpoints of the SaPE² authors' code load too: their SaPE² tables are
converted by :mod:`.sape2_pretrained`.

Users bring checkpoints from everywhere; each names the same tensors
differently. This module maps them onto mmsape's (timm-like) names, hands the
learned position table to the APE module (whose load hook resamples it to the
configured grid), drops what the model does not have (classifier heads, a class
token the model does not use) and prints one readable report instead of a wall
of 'size mismatch' errors.
"""
import re
from typing import Dict, List, Optional, Tuple

from mmengine.logging import print_log
from torch import Tensor, nn

from mmsape.utils.checkpoint import format_state_dict_report, load_checkpoint_safely

from .sape2_pretrained import convert_authors_sape2_state, is_authors_sape2_state

#: (pattern, replacement) applied in order to every key, after prefix removal.
#: timm and DeiT keys already match mmsape's names.
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
]
#: Classifier / distillation parts that a backbone never has.
IGNORED_KEYS = re.compile(r'^(head|head_dist|fc_norm|dist_token|pre_logits)\b')


def unwrap_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> Dict[str, Tensor]:
    """The tensor dict inside a checkpoint ('state_dict' / 'model' / 'module' / bare),
    with ``prefix`` (e.g. 'backbone.') removed; when no prefix is given and every
    backbone key sits under 'backbone.', that prefix is removed."""
    state = checkpoint
    for wrapper in ('state_dict', 'model', 'module'):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
    if prefix is None and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone.'
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def convert_vit_keys(state: Dict[str, Tensor], ape_key: Optional[str]) -> Tuple[
        Dict[str, Tensor], List[str]]:
    """Rename keys to mmsape's; return the converted dict and the ignored keys."""
    converted, ignored = {}, []
    for key, value in state.items():
        if IGNORED_KEYS.match(key):
            ignored.append(key)
            continue
        if key == 'pos_embed':
            if ape_key is None:
                ignored.append(key)
                continue
            key = ape_key
        for pattern, replacement in KEY_RULES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted, ignored


def find_ape_key(model: nn.Module) -> Optional[str]:
    """State-dict key of the model's learned APE table, if it has one."""
    from mmsape.models.pos_encodings import LearnedAPE
    for name, module in model.named_modules():
        if isinstance(module, LearnedAPE):
            return f'{name}.pos_embed'
    return None


def load_vit_pretrained(model: nn.Module, checkpoint: str,
                        prefix: Optional[str] = None) -> Dict[str, list]:
    """Load a ViT checkpoint into ``model`` (a :class:`PosEncViT`) and report.

    Args:
        model (nn.Module): The backbone.
        checkpoint (str): Path (``.pth`` loaded with ``weights_only=True``, or
            ``.safetensors``).
        prefix (str, optional): Key prefix of the backbone inside the file, e.g.
            'backbone.' for a whole mmpretrain classifier (found automatically
            when every backbone key has it).

    Returns:
        dict: ``missing``, ``unexpected`` and ``resized`` keys, as reported.
    """
    state = unwrap_state_dict(load_checkpoint_safely(checkpoint), prefix)
    authors_unused = []
    if is_authors_sape2_state(state):
        state, authors_unused = convert_authors_sape2_state(state, model)
    converted, ignored = convert_vit_keys(state, find_ape_key(model))
    ignored += authors_unused
    own = model.state_dict()
    ape_key = find_ape_key(model)
    loadable, resized, mismatched = {}, [], []
    for key, value in converted.items():
        if key not in own:
            continue
        if key == ape_key and value.shape != own[key].shape:
            # LearnedAPE's load hook resamples the table; report it here.
            resized.append((key, tuple(value.shape), tuple(own[key].shape)))
        elif value.shape != own[key].shape:
            mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
            continue
        loadable[key] = value
    result = model.load_state_dict(loadable, strict=False)
    unexpected = sorted(set(converted) - set(own)) + sorted(ignored)
    missing = sorted(result.missing_keys)
    report = format_state_dict_report(missing=missing, unexpected=unexpected,
                                      resized=resized + mismatched)
    print_log(f'Loaded pretrained weights from {checkpoint}\n{report}', logger='current')
    if mismatched:
        print_log(f'{len(mismatched)} tensors were NOT loaded because their shapes differ '
                  f'(listed as resized above with both shapes): '
                  f'{", ".join(k for k, *_ in mismatched)}.', logger='current',
                  level=30)
    return dict(missing=missing, unexpected=unexpected, resized=resized,
                mismatched=mismatched)
