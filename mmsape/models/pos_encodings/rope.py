"""2D rotary position embedding: RoPE-ViT's axial and mixed forms (Heo et al., ECCV 2024)
and DINOv3's normalised coordinates (Simeoni et al., 2025)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, apply_rot_embed_cat
from timm.layers.pos_embed_sincos import get_mixed_freqs, get_mixed_grid, init_random_2d_freqs
from torch import Tensor, nn

from mmsape.registry import POS_ENCODINGS

from .base import AttentionPositionEncoding, TokenGrid
from .grid_cache import GridCache

_MODES = ('axial', 'mixed')
# RoPE-ViT's frequency bases: 100 for axial, 10 for the learnable mixed
# frequencies; DINOv3's period base for normalised coordinates is 100 too.
_DEFAULT_THETA = {'axial': 100., 'mixed': 10.}
_COORD_NORMALIZATIONS = ('separate', 'min', 'max')
_COORD_AUGMENTATIONS = ('shift_coords', 'jitter_coords', 'rescale_coords')


@POS_ENCODINGS.register_module()
class RoPE2D(AttentionPositionEncoding):
    """2D rotary position embedding of patch tokens (RoPE-ViT, DINOv3).

    Channel pairs of each head's ``q`` and ``k`` are rotated by angles that
    grow with the patch's position, i.e. multiplied by ``exp(1j * angle)`` as
    complex numbers, so that the ``q.k`` logits depend on position
    differences. Prefix tokens are not rotated. Attention itself is plain
    scaled dot-product attention, so fused kernels still apply.

    Integer coordinates (RoPE-ViT; ``normalize_coords=None``): pairs are
    ``(x[2i], x[2i+1])``, the patch at column ``x`` and row ``y`` (0-based).

    * ``'axial'``: the first ``d/4`` pairs use the column, the last ``d/4`` the
      row: ``a_i = x * f_i`` and ``a_{d/4+i} = y * f_i`` with
      ``f_i = theta ** (-i / (d/4))``.
    * ``'mixed'``: learnable frequencies per layer and head,
      ``a_i = fx_i * x + fy_i * y``, initialised as in RoPE-ViT's
      ``init_random_2d_freqs`` (axial magnitudes, rotated by a random angle per
      head and layer).

    Normalised coordinates (DINOv3's ``RopePositionEmbedding``,
    ``dinov3/layers/rope_position_encoding.py`` L62-121 at 6876159; axial only,
    ``normalize_coords='separate' | 'min' | 'max'``): patch centres of an
    ``H x W`` grid, ``cy = 2 (y + 0.5) / Dy - 1`` and ``cx = 2 (x + 0.5) / Dx - 1``,
    with ``Dy, Dx = H, W`` ('separate': each axis spans [-1, 1]), ``max(H, W)``
    ('max': the longer axis spans [-1, 1]) or ``min(H, W)`` ('min': the shorter
    does). Pairs are ``(x[i], x[i + d/2])`` (rotate-half layout); the first
    ``d/4`` use the row, the last ``d/4`` the column:
    ``a_i = 2 pi cy / p_i``, ``a_{d/4+i} = 2 pi cx / p_i`` with periods
    ``p_i = theta ** (i / (d/4))`` (DINOv3's ``base``; or ``min_period`` to
    ``max_period``, log-spaced). A grid twice as large samples the same range,
    twice as densely. In training only, DINOv3's coordinate augmentations apply,
    in this order, drawn afresh for every block and forward pass and shared by
    the images and heads of the batch (DINOv3 calls its embedding once per
    block, ``vision_transformer.py`` L231 and L276):

    * ``shift_coords=s``: ``c += u`` with ``u ~ U(-s, s)``, one per axis;
    * ``jitter_coords=J``: ``c *= exp(v)`` with ``v ~ U(-log J, log J)``, one per axis;
    * ``rescale_coords=R``: ``c *= exp(w)`` with ``w ~ U(-log R, log R)``, one
      for both axes (DINOv3's released models: ``R = 2`` alone).

    They use PyTorch's global random generator (``torch.manual_seed`` makes
    them reproducible). Evaluation uses the plain coordinates.

    Implementation: timm's ``RotaryEmbeddingCat`` (``in_pixels=False``,
    ``grid_indexing='xy'``) and ``get_mixed_freqs`` build RoPE-ViT's angles,
    ``RotaryEmbeddingDinoV3`` (``grid_indexing='ij'``, ``rotate_half=True``)
    DINOv3's, and ``apply_rot_embed_cat`` rotates. The tests check each
    against a naive implementation of the equations. Angles that depend on the
    grid alone are built once per grid and device (:class:`GridCache`).

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads; the head dim ``embed_dims // num_heads``
            must be divisible by 4 (two axes, pairs of channels).
        num_layers (int): Backbone blocks.
        base_grid (tuple[int, int]): Unused: angles are computed for every grid.
        num_prefix_tokens (int): Class / register tokens in front of the grid.
        mode (str): ``'axial'`` or ``'mixed'``. Defaults to 'axial'.
        theta (float, optional): Frequency base. Defaults to None, which means
            RoPE-ViT's choice for the mode (100 axial, 10 mixed), or DINOv3's
            base 100 with normalised coordinates.
        normalize_coords (str, optional): None for integer patch coordinates
            (RoPE-ViT), else DINOv3's normalisation, 'separate' (its default),
            'min' or 'max'. Defaults to None.
        min_period (float, optional): With ``max_period``, DINOv3's alternative
            to ``theta``: periods log-spaced from ``min_period`` to
            ``max_period``. Normalised coordinates only. Defaults to None.
        max_period (float, optional): See ``min_period``. Defaults to None.
        shift_coords (float, optional): Training-time shift ``s`` (>= 0).
            Normalised coordinates only. Defaults to None (off).
        jitter_coords (float, optional): Training-time per-axis scale factor
            ``J`` (>= 1). Normalised coordinates only. Defaults to None (off).
        rescale_coords (float, optional): Training-time global scale factor
            ``R`` (>= 1). Normalised coordinates only. Defaults to None (off).
        layers (Sequence[int], optional): Blocks whose attention is rotated;
            the others use plain attention. Defaults to None (all blocks).
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.

    Examples:
        >>> import torch
        >>> rope = RoPE2D(embed_dims=32, num_heads=2, num_layers=2, mode='mixed')
        >>> q = k = v = torch.rand(3, 2, 1 + 4 * 6, 16)  # (B, heads, P + H*W, d)
        >>> rope.attention(0, q, k, v, TokenGrid(4, 6, num_prefix=1)).shape
        torch.Size([3, 2, 25, 16])
        >>> dinov3 = RoPE2D(embed_dims=32, num_heads=2, num_layers=2,
        ...                 normalize_coords='separate', rescale_coords=2.)
        >>> dinov3.attention(0, q, k, v, TokenGrid(4, 6, num_prefix=1)).shape
        torch.Size([3, 2, 25, 16])
    """

    # RoPE-ViT excludes the mixed frequencies from weight decay.
    exclude_from_weight_decay = True
    per_block_attr = 'freqs'

    def __init__(self,
                 mode: str = 'axial',
                 theta: float | None = None,
                 normalize_coords: str | None = None,
                 min_period: float | None = None,
                 max_period: float | None = None,
                 shift_coords: float | None = None,
                 jitter_coords: float | None = None,
                 rescale_coords: float | None = None,
                 **backbone_args) -> None:
        super().__init__(**backbone_args)
        if mode not in _MODES:
            raise ValueError(f'mode={mode!r} is not a RoPE2D mode; use one of {_MODES}.')
        if self.head_dims % 4:
            raise ValueError(
                f'RoPE2D needs a head dim divisible by 4 (two axes times pairs of '
                f'channels), but embed_dims={self.embed_dims} / num_heads={self.num_heads} = '
                f'{self.head_dims}; change num_heads or embed_dims.')
        self._check_coordinate_options(mode, theta, normalize_coords, min_period, max_period,
                                       shift_coords, jitter_coords, rescale_coords)
        theta = _DEFAULT_THETA[mode] if theta is None else float(theta)
        if min_period is not None:
            theta = None  # the periods come from min_period / max_period
        elif theta <= 0:
            raise ValueError(f'theta={theta} must be > 0 (RoPE-ViT: 100 axial, 10 mixed).')
        self.mode = mode
        self.theta = theta
        self.normalize_coords = normalize_coords

        self.freqs = None
        if normalize_coords is not None:
            # DINOv3's exact layout: rotate-half pairs, rows ('ij') first.
            self.rotary = RotaryEmbeddingDinoV3(
                dim=self.head_dims, temperature=theta, min_period=min_period,
                max_period=max_period, normalize_coords=normalize_coords,
                grid_indexing='ij', rotate_half=True, shift_coords=shift_coords,
                jitter_coords=jitter_coords, rescale_coords=rescale_coords)
        elif mode == 'axial':
            # 'index' grid (in_pixels=False) with 'xy' indexing: angles from integer
            # (column, row), column first, like RoPE-ViT's compute_axial_cis.
            self.rotary = RotaryEmbeddingCat(
                dim=self.head_dims, temperature=theta, in_pixels=False, grid_indexing='xy')
        else:
            self.rotary = None
            freqs = init_random_2d_freqs(
                self.head_dims, len(self.layers), self.num_heads, temperature=theta)
            # One (2, heads, d/2) tensor per rotated block, keyed by block index so
            # that layer-wise lr decay can place it.
            self.freqs = nn.ParameterDict({
                str(layer): nn.Parameter(freqs[:, i].clone())
                for i, layer in enumerate(self.layers)
            })
        self._embeds = GridCache()

    @staticmethod
    def _check_coordinate_options(mode, theta, normalize_coords, min_period, max_period,
                                  *augmentations) -> None:
        dinov3_options = dict(zip(('min_period', 'max_period') + _COORD_AUGMENTATIONS,
                                  (min_period, max_period) + augmentations))
        if normalize_coords is None:
            given = [name for name, value in dinov3_options.items() if value is not None]
            if given:
                raise ValueError(f'{", ".join(given)} apply to normalised coordinates only '
                                 f"(DINOv3); set normalize_coords='separate' or remove them.")
            return
        if normalize_coords not in _COORD_NORMALIZATIONS:
            raise ValueError(f'normalize_coords={normalize_coords!r} is not one of DINOv3\'s '
                             f'normalisations {_COORD_NORMALIZATIONS} (None: integer '
                             f'coordinates).')
        if mode != 'axial':
            raise ValueError(f"normalize_coords={normalize_coords!r} needs mode='axial' "
                             f'(DINOv3 is axial); RoPE-ViT\'s mixed frequencies are '
                             f'defined for integer coordinates.')
        if (min_period is None) != (max_period is None):
            raise ValueError(f'min_period={min_period} and max_period={max_period}: give both '
                             f'(log-spaced periods) or neither (periods from theta).')
        if min_period is not None and theta is not None:
            raise ValueError(f'theta={theta} and min_period/max_period both set the periods; '
                             f'give one of them (DINOv3: base=100).')
        if min_period is not None and not 0 < min_period <= max_period:
            raise ValueError(f'min_period={min_period}, max_period={max_period} must satisfy '
                             f'0 < min_period <= max_period.')

    @property
    def augments_coords(self) -> bool:
        """True when the angles are drawn afresh at each call (training with
        DINOv3's coordinate augmentations)."""
        return self.normalize_coords is not None and self.training and self.rotary.aug_active

    def rotary_embed(self, layer_index: int, grid: TokenGrid, device: torch.device) -> Tensor:
        """Concatenated ``[sin, cos]`` angles of the patch tokens for one layer.

        Returns ``(H*W, 2d)`` for axial, ``(heads, H*W, 2d)`` for mixed: the
        interleaved layout of timm's ``apply_rot_embed_cat`` for integer
        coordinates, the rotate-half layout (``half=True``) for normalised ones.
        Under training-time coordinate augmentation every call draws anew.
        """
        if self.mode == 'mixed':
            freqs = self.freqs[str(layer_index)]
            cols, rows = get_mixed_grid(list(grid.hw), grid_indexing='xy', device=freqs.device)
            return get_mixed_freqs(freqs, cols, rows, dtype=torch.float32)
        if self.augments_coords:
            return self.rotary.get_embed(list(grid.hw)).to(device)
        # The same for every layer and batch of this grid size: build once.
        return self._embeds.get(
            (grid.hw, device), lambda: self.rotary.get_embed(list(grid.hw)).to(device))

    def rotate(self, layer_index: int, x: Tensor, grid: TokenGrid,
               embed: Tensor | None = None) -> Tensor:
        """Rotate the patch tokens of ``(B, heads, P + H*W, d)`` queries or keys.

        ``embed`` (from :meth:`rotary_embed`) lets queries and keys share one
        draw of the training-time augmentation; by default it is computed here.
        """
        if embed is None:
            embed = self.rotary_embed(layer_index, grid, x.device)
        prefix, patches = x[:, :, :grid.num_prefix], x[:, :, grid.num_prefix:]
        rotated = apply_rot_embed_cat(patches, embed, half=self.normalize_coords is not None)
        return torch.cat([prefix, rotated], dim=2)

    def encoded_attention(self, layer_index: int, q: Tensor, k: Tensor, v: Tensor,
                          grid: TokenGrid, dropout_p: float = 0.,
                          tokens: Optional[Tensor] = None) -> Tensor:
        embed = self.rotary_embed(layer_index, grid, q.device)
        q = self.rotate(layer_index, q, grid, embed)
        k = self.rotate(layer_index, k, grid, embed)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)

    def extra_repr(self) -> str:
        coords = ('' if self.normalize_coords is None else
                  f', normalize_coords={self.normalize_coords!r}, '
                  f'augment=(shift={self.rotary.shift_coords}, '
                  f'jitter={self.rotary.jitter_coords}, rescale={self.rotary.rescale_coords})')
        return (f'{super().extra_repr()}, mode={self.mode!r}, theta={self.theta}{coords}, '
                f'layers={self.layers}')


__all__ = ['RoPE2D']
