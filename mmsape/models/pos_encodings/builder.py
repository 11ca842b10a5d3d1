"""Build a backbone's position encoding from its config (dict or list of dicts)."""
import inspect
from typing import List, Set, Union

from torch import nn

from mmsape.registry import POS_ENCODINGS

from .base import BasePositionEncoding, TokenGrid


def registered_pos_encodings() -> List[str]:
    """Names of every registered position encoding (after lazy imports)."""
    POS_ENCODINGS.import_from_location()
    return sorted(POS_ENCODINGS.module_dict)


def build_pos_encoding(cfg: Union[dict, list, tuple, None],
                       **backbone_args) -> BasePositionEncoding:
    """Build one encoding, or a :class:`PositionEncodingStack` from a list.

    ``backbone_args`` (embed_dims, num_heads, ...) describe the ViT and are passed
    to every encoding. An unknown ``type`` raises a ``KeyError`` that lists the
    registered encodings, instead of MMEngine's bare 'not in the registry'.
    """
    if cfg is None:
        cfg = dict(type='NoPositionEncoding')
    if isinstance(cfg, (list, tuple)):
        if len(cfg) == 1:
            return build_pos_encoding(cfg[0], **backbone_args)
        return PositionEncodingStack(
            [build_pos_encoding(c, **backbone_args) for c in cfg], **backbone_args)
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'pos_encoding must be a dict with a "type" key (or a list '
                        f'of such dicts), got {cfg!r}. Registered types: '
                        f'{", ".join(registered_pos_encodings())}.')
    encoding_cls = cfg['type']
    if isinstance(encoding_cls, str):
        name = encoding_cls[len('mmsape.'):] if encoding_cls.startswith('mmsape.') else encoding_cls
        if name not in registered_pos_encodings():
            raise KeyError(
                f'Unknown position encoding {encoding_cls!r}. Registered position '
                f'encodings: {", ".join(registered_pos_encodings())}. Third-party '
                f'encodings must be imported first (custom_imports in the config).')
        # Instantiated here rather than with POS_ENCODINGS.build: build() switches
        # to the caller's default scope (mmdet, mmseg, ...), which this registry
        # tree does not have, and MMEngine would warn for every backbone.
        encoding_cls = POS_ENCODINGS.get(name)
    options = {k: v for k, v in cfg.items() if k != 'type'}
    unknown = sorted(set(options) - accepted_options(encoding_cls))
    if unknown:
        raise TypeError(
            f'{encoding_cls.__name__} does not take the option(s) {", ".join(unknown)}; it '
            f'takes {", ".join(sorted(accepted_options(encoding_cls) - set(backbone_args)))}. '
            f'Options of another encoding remain when only pos_encoding.type is changed: '
            f'remove them from the config too.')
    return encoding_cls(**{**backbone_args, **options})


def accepted_options(encoding_cls: type) -> Set[str]:
    """Keyword arguments ``encoding_cls(...)`` accepts, following ``**kwargs``
    up the class hierarchy."""
    names: Set[str] = set()
    for klass in encoding_cls.__mro__:
        if '__init__' not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != 'self'}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


@POS_ENCODINGS.register_module()
class PositionEncodingStack(BasePositionEncoding):
    """Several encodings used together, e.g. SaPE² + learned APE.

    Token hooks run in list order. At most one member may act inside attention
    (two would each need to own the softmax).

    Args:
        encodings (list[BasePositionEncoding]): Built encodings.
        **backbone_args: See :class:`BasePositionEncoding`.
    """

    def __init__(self, encodings: List[BasePositionEncoding], **backbone_args) -> None:
        init_cfg = backbone_args.pop('init_cfg', None)
        super().__init__(init_cfg=init_cfg, **backbone_args)
        self.encodings = nn.ModuleList(encodings)
        in_attention = [e for e in encodings if e.acts_in_attention]
        if len(in_attention) > 1:
            names = ', '.join(type(e).__name__ for e in in_attention)
            raise ValueError(f'pos_encoding lists several encodings that act inside '
                             f'attention ({names}); keep at most one of them.')
        # An index, not the module: a module attribute would register it twice.
        self._attention_index = next(
            (i for i, e in enumerate(encodings) if e.acts_in_attention), None)
        self.acts_in_attention = self._attention_index is not None

    def encode_tokens(self, x, grid: TokenGrid):
        for encoding in self.encodings:
            x = encoding.encode_tokens(x, grid)
        return x

    def after_block(self, block_index, x, grid: TokenGrid):
        for encoding in self.encodings:
            x = encoding.after_block(block_index, x, grid)
        return x

    def attention(self, layer_index, q, k, v, grid: TokenGrid, dropout_p=0., tokens=None):
        if self._attention_index is None:
            return super().attention(layer_index, q, k, v, grid, dropout_p=dropout_p,
                                     tokens=tokens)
        return self.encodings[self._attention_index].attention(
            layer_index, q, k, v, grid, dropout_p=dropout_p, tokens=tokens)

    def no_weight_decay(self):
        return {f'encodings.{i}.{name}' for i, e in enumerate(self.encodings)
                for name in e.no_weight_decay()}

    def layer_index_of(self, param_name):
        index, _, rest = param_name.partition('.')[2].partition('.')
        if not index.isdigit():
            return None
        return self.encodings[int(index)].layer_index_of(rest)

    def check_compatible(self, **options):
        for encoding in self.encodings:
            encoding.check_compatible(**options)

    def convert_checkpoint_keys(self, state, prefix):
        # In list order: the first learned APE takes a checkpoint's table.
        return [key for i, encoding in enumerate(self.encodings)
                for key in encoding.convert_checkpoint_keys(state, f'{prefix}encodings.{i}.')]

    def resampled_on_load(self):
        return {f'encodings.{i}.{name}' for i, e in enumerate(self.encodings)
                for name in e.resampled_on_load()}
