"""The one interface every position encoding implements.

Position encodings act at up to three places of a ViT, and each kind overrides
only the hook it needs:

* token-additive (learned APE, 2D sin-cos): :meth:`encode_tokens`, once, right
  after the patch embedding and the prefix (class / register) tokens;
* between blocks (CPVT's PEG): :meth:`after_block`, after chosen blocks;
* inside attention (2D RoPE, SaPE², CoPE, PaPE): :meth:`attention`, which
  receives one layer's per-head ``q, k, v`` and the tokens the attention reads
  (``tokens``: the block's input after its first norm, in windows where the
  block attends in windows) and returns the attended values. Such encodings
  derive from :class:`AttentionPositionEncoding`, which owns the ``layers``
  option (the blocks they act in; the others attend plainly). A q/k transform
  (RoPE) rotates ``q, k`` first; an attention-logit bias
  (:class:`AttentionBiasPositionEncoding`) provides
  ``attention_bias(layer_index, q, k, grid, tokens=None)``, which the default
  attention adds to the logits. Every override of these hooks accepts
  ``tokens`` (checked when the class is defined); an encoding that needs them
  (PaPE computes its curvatures from them) raises when it gets ``None``.

Checkpoints of other code bases (timm, DeiT, mmpretrain, mmseg, a paper's own
code) name an encoding's parameters their way. Each encoding converts its own:
the backbone's load hook hands it the checkpoint's keys
(:meth:`~BasePositionEncoding.convert_checkpoint_keys`) before converting the
rest of the ViT.

Parameters that belong to one block (a table per layer) live in a container
named by :attr:`~BasePositionEncoding.per_block_attr` and keyed by the block
index (``'<per_block_attr>.<block>'``), so that layer-wise lr decay and
``frozen_stages`` place them with their block.

The backbone passes a :class:`TokenGrid` everywhere, so that an encoding never
guesses the layout: ``num_prefix`` prefix tokens followed by an ``H x W`` grid in
row-major order, with H and W free to differ and to change from batch to batch.
"""
import inspect
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor


@dataclass(frozen=True)
class TokenGrid:
    """Layout of a token sequence: prefix tokens, then an H x W patch grid.

    Args:
        height (int): Rows of the patch grid.
        width (int): Columns of the patch grid.
        num_prefix (int): Class / register tokens in front of the grid.
        pad_mask (Tensor, optional): ``(B, H, W)`` bool, True where a grid cell is
            padding rather than image (padded batches in detection, padded
            windows). ``None`` means every cell is image.
    """
    height: int
    width: int
    num_prefix: int = 0
    pad_mask: Optional[Tensor] = None

    @property
    def hw(self) -> Tuple[int, int]:
        return self.height, self.width

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    def replace(self, **changes) -> 'TokenGrid':
        return replace(self, **changes)


#: The hooks that run inside attention; each override accepts ``tokens``.
ATTENTION_HOOKS = ('attention', 'encoded_attention', 'attention_bias')


def split_prefix(x: Tensor, grid: TokenGrid) -> Tuple[Tensor, Tensor]:
    """Split ``(..., P + H*W, C)`` tokens into prefix and patch tokens."""
    return x[..., :grid.num_prefix, :], x[..., grid.num_prefix:, :]


class BasePositionEncoding(BaseModule):
    """Base class of all position encodings; on its own it encodes nothing.

    The backbone builds the encoding with these keyword arguments (they describe
    the ViT it lives in), so every subclass accepts them.

    Weight decay: the model declares, the optimizer reads. An encoding names the
    parameters its paper trains without weight decay in :meth:`no_weight_decay`
    (by default all of them when :attr:`exclude_from_weight_decay` is True);
    :class:`~mmsape.models.PosEncViT` adds its prefix tokens, and mmsape's
    optimizer wrapper constructors
    (``constructor='mmsape.DeclaredDecayOptimWrapperConstructor'`` or
    ``'mmsape.LayerDecayOptimWrapperConstructor'``) give exactly those
    parameters ``weight_decay=0``. Configs therefore need no
    ``custom_keys={'pos_encoding': dict(decay_mult=0.)}``.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads; the head dim is ``embed_dims // num_heads``.
        num_layers (int): Transformer blocks in the backbone.
        base_grid (tuple[int, int]): Patch grid of the configured ``img_size``;
            size of tables that are stored per grid cell.
        num_prefix_tokens (int): Class / register tokens in front of the grid.
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.
    """

    #: True when the encoding changes attention; the backbone then routes every
    #: layer's attention through :meth:`attention`.
    acts_in_attention: bool = False
    #: Name of a per-block container (keyed by block index, e.g. a ModuleDict
    #: 'convs' holding '0', '3') whose entries belong to that block: parameters
    #: named '<per_block_attr>.<block>...' follow the block in layer-wise lr
    #: decay and ``frozen_stages``.
    per_block_attr: Optional[str] = None
    #: True when every parameter is a position table / filter that its paper
    #: trains without weight decay (APE tables, PEG, RoPE-ViT frequencies).
    exclude_from_weight_decay: bool = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for hook in ATTENTION_HOOKS:
            method = vars(cls).get(hook)
            if method is None:
                continue
            parameters = inspect.signature(method).parameters.values()
            if not any(p.name == 'tokens' or p.kind == p.VAR_KEYWORD for p in parameters):
                raise TypeError(
                    f'{cls.__name__}.{hook} does not accept `tokens`: the backbone passes '
                    f'every attention hook the (B, N, C) tokens the attention reads. Add '
                    f'`tokens: Optional[Tensor] = None` to its signature (and pass it on '
                    f'where it calls another hook).')

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 num_layers: int,
                 base_grid: Tuple[int, int] = (14, 14),
                 num_prefix_tokens: int = 1,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} is not divisible by '
                             f'num_heads={num_heads}; change one of them.')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.num_layers = num_layers
        self.base_grid = tuple(base_grid)
        self.num_prefix_tokens = num_prefix_tokens

    def encode_tokens(self, x: Tensor, grid: TokenGrid) -> Tensor:
        """Add position to ``(B, P + H*W, C)`` tokens after the patch embedding."""
        return x

    def after_block(self, block_index: int, x: Tensor, grid: TokenGrid) -> Tensor:
        """Encode position into ``(B, P + H*W, C)`` tokens after block ``block_index``."""
        return x

    def attention(self,
                  layer_index: int,
                  q: Tensor,
                  k: Tensor,
                  v: Tensor,
                  grid: TokenGrid,
                  dropout_p: float = 0.,
                  tokens: Optional[Tensor] = None) -> Tensor:
        """Attend ``(B, heads, P + H*W, head_dim)`` queries to keys and values.

        ``tokens`` are the ``(B, P + H*W, C)`` tokens the attention reads (the
        input of its q/k/v projection), for encodings whose position terms depend
        on content (PaPE); the backbone always passes them. The default is plain
        scaled dot-product attention (softmax of ``q.k / sqrt(d)``), which is
        what a layer without an attention-level encoding computes.
        """
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)

    def no_weight_decay(self) -> Set[str]:
        """Names (relative to this module) of the parameters that get no weight
        decay; mmsape's optimizer wrapper constructors read them."""
        if self.exclude_from_weight_decay:
            return {name for name, _ in self.named_parameters()}
        return set()

    def layer_index_of(self, param_name: str) -> Optional[int]:
        """Block a parameter belongs to, for layer-wise lr decay and freezing.

        ``None`` puts it with the patch embedding, at depth 0; see
        :attr:`per_block_attr` for the default mapping.
        """
        container, _, rest = param_name.partition('.')
        index = rest.split('.')[0]
        if self.per_block_attr is not None and container == self.per_block_attr \
                and index.isdigit():
            return int(index)
        return None

    def check_compatible(self, *, window_size: int, with_cls_token: bool) -> None:
        """Raise ``ValueError`` naming the option to change when the backbone's
        configuration cannot work with this encoding (called at build time)."""

    # --- checkpoints of other code bases ------------------------------------

    @classmethod
    def foreign_checkpoint_source(cls, state: Mapping[str, Tensor]) -> Optional[str]:
        """The code base whose layout of this encoding's parameters ``state``
        holds, when only this encoding can convert it; None (the default) when
        it holds none.

        The backbone asks every registered encoding, so that a checkpoint whose
        encoding the model lacks fails with an error naming the encoding to add,
        instead of loading without it.

        Args:
            state (Mapping[str, Tensor]): A backbone's weights as saved (keys
                without the backbone's prefix).

        Returns:
            str | None: E.g. 'sape2-authors'; it becomes the load report's
            ``source``.
        """
        return None

    def convert_checkpoint_keys(self, state: Dict[str, Tensor], prefix: str) -> List[str]:
        """Give the keys under which other code bases save this encoding's
        parameters this module's names, in ``state`` itself.

        The backbone's load-state-dict pre-hook calls it with the checkpoint's
        backbone weights as saved (timm / DeiT / mmpretrain / mmseg / a paper's
        code names, no backbone prefix), before it converts the rest of the ViT;
        mmsape's own keys already match and pass unchanged. The default
        converts nothing.

        Args:
            state (dict[str, Tensor]): The backbone's weights, changed in place.
            prefix (str): Where this encoding sits in the backbone, e.g.
                ``'pos_encoding.'`` (``'pos_encoding.encodings.1.'`` in a stack).

        Returns:
            list[str]: Checkpoint keys dropped because this encoding has no
            place for them (reported as unexpected).
        """
        return []

    def resampled_on_load(self) -> Set[str]:
        """Names (relative to this module) of the parameters that this
        encoding's own load hook resamples to its shape, so that a checkpoint
        tensor of another shape is reported as resized, not refused. None by
        default."""
        return set()

    def extra_repr(self) -> str:
        return f'embed_dims={self.embed_dims}, num_heads={self.num_heads}'


class AttentionPositionEncoding(BasePositionEncoding):
    """Base of the encodings that act inside the attention of chosen blocks.

    Blocks not in ``layers`` attend plainly; the others go through
    :meth:`encoded_attention`, which subclasses implement.

    Args:
        layers (Sequence[int], optional): Blocks the encoding acts in (negatives
            count from the end). None means every block. Defaults to None.
        **backbone_args: See :class:`BasePositionEncoding`.
    """

    acts_in_attention = True

    def __init__(self, layers: Optional[Sequence[int]] = None, **backbone_args) -> None:
        super().__init__(**backbone_args)
        self.layers = layers_from_option(layers, self.num_layers, name='layers')

    def attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                  grid: TokenGrid, dropout_p: float = 0.,
                  tokens: Optional[Tensor] = None) -> Tensor:
        if layer_index not in self.layers:
            return super().attention(layer_index, q, k, v, grid, dropout_p=dropout_p,
                                     tokens=tokens)
        return self.encoded_attention(layer_index, q, k, v, grid, dropout_p=dropout_p,
                                      tokens=tokens)

    def encoded_attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                          grid: TokenGrid, dropout_p: float = 0.,
                          tokens: Optional[Tensor] = None) -> Tensor:
        """The attention of a block in :attr:`layers`; same arguments as
        :meth:`attention`."""
        raise NotImplementedError(f'{type(self).__name__} must implement encoded_attention.')


class AttentionBiasPositionEncoding(AttentionPositionEncoding):
    """Base of the encodings that add a bias to the attention logits.

    Subclasses implement :meth:`attention_bias`; the attention of a block in
    ``layers`` is then ``softmax(q.k / sqrt(d) + bias) v``
    (:func:`attention_with_bias`). A subclass may override
    :meth:`encoded_attention` with a faster path that computes the same
    attention without materialising the bias (SaPE²'s kernels).
    """

    def attention_bias(self, layer_index: int, q: Tensor, k: Tensor,
                       grid: TokenGrid, tokens: Optional[Tensor] = None) -> Tensor:
        """The logit bias of block ``layer_index`` for ``(B, heads, P + H*W, d)``
        queries and keys (and the attention's ``(B, P + H*W, C)`` input
        ``tokens``, for encodings that read them): a tensor that broadcasts to
        ``(B, heads, N, N)``, zero in the rows and columns of prefix tokens unless
        the encoding says otherwise."""
        raise NotImplementedError(f'{type(self).__name__} must implement attention_bias.')

    def encoded_attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                          grid: TokenGrid, dropout_p: float = 0.,
                          tokens: Optional[Tensor] = None) -> Tensor:
        bias = self.attention_bias(layer_index, q, k, grid, tokens=tokens)
        return attention_with_bias(q, k, v, bias, dropout_p=dropout_p)


def attention_with_bias(q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                        dropout_p: float = 0.) -> Tensor:
    """softmax(q.k / sqrt(d) + bias) v; ``bias`` broadcasts to (B, heads, Nq, Nk).

    The bias is added after the 1/sqrt(d) scaling, as both SaPE² and CoPE
    reference codes do.
    """
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)


def padding_key_mask(grid: TokenGrid) -> Optional[Tensor]:
    """``(B, 1, N, N)`` bool, True where a query must not attend to a key: an
    image or prefix query and a padding key (``grid.pad_mask``); ``None`` without
    padding.

    Image tokens then compute exactly what they compute on the unpadded grid.
    Padding queries attend to everything, which keeps their softmax defined even
    in a window that is all padding; their outputs are never used.
    """
    if grid.pad_mask is None:
        return None
    padding = F.pad(grid.pad_mask.flatten(1), (grid.num_prefix, 0), value=False)
    return padding[:, None, None, :] & ~padding[:, None, :, None]


def layers_from_option(option: Optional[Sequence[int]], num_layers: int,
                       name: str = 'layers') -> Tuple[int, ...]:
    """Resolve a 'which blocks' option: ``None`` means all, negatives count from the end."""
    if option is None:
        return tuple(range(num_layers))
    resolved = []
    for index in option:
        real = index + num_layers if index < 0 else index
        if not 0 <= real < num_layers:
            raise ValueError(f'{name} contains {index}, but the backbone has '
                             f'{num_layers} blocks (valid: 0..{num_layers - 1} or '
                             f'-{num_layers}..-1).')
        resolved.append(real)
    return tuple(sorted(set(resolved)))


def grid_to_map(tokens: Tensor, grid: TokenGrid) -> Tensor:
    """``(B, H*W, C)`` patch tokens -> ``(B, C, H, W)`` map."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, grid.height, grid.width)


def map_to_grid(feature_map: Tensor) -> Tensor:
    """``(B, C, H, W)`` map -> ``(B, H*W, C)`` tokens."""
    return feature_map.flatten(2).transpose(1, 2)


__all__ = [
    'TokenGrid', 'BasePositionEncoding', 'AttentionPositionEncoding',
    'AttentionBiasPositionEncoding', 'attention_with_bias', 'padding_key_mask', 'split_prefix',
    'layers_from_option', 'grid_to_map', 'map_to_grid'
]
