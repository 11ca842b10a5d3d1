"""mmdet detectors that tell the backbone which pixels are batch padding.

mmdet pads every image of a batch to the largest one and gives the backbone
only the padded tensor. Encodings that look at neighbouring tokens (PEG's
convolution) would then treat the padding as image, so a detection differs
with the other images in the batch. CPVT's detection variant masks padding
out; these detectors pass ``PosEncViT`` that mask, read from each sample's
``img_shape``.
"""
from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
from mmdet.models.detectors import MaskRCNN, RetinaNet
from torch import Tensor

from mmsape.registry import MODELS


def batch_padding_mask(batch_inputs: Tensor, batch_data_samples: List) -> Optional[Tensor]:
    """``(B, H, W)`` bool mask, True on pixels outside each sample's ``img_shape``;
    None when no image of the batch is padded."""
    batch, _, height, width = batch_inputs.shape
    mask = torch.ones(batch, height, width, dtype=torch.bool, device=batch_inputs.device)
    for index, sample in enumerate(batch_data_samples):
        image_h, image_w = sample.metainfo['img_shape'][:2]
        mask[index, :image_h, :image_w] = False
    return mask if mask.any() else None


class PaddingAwareMixin:
    """Give the backbone the batch's padding mask in ``loss``, ``predict`` and
    ``_forward`` (the three entry points that call ``extract_feat``)."""
    _padding_mask: Optional[Tensor] = None

    @contextmanager
    def _padding_of(self, batch_inputs: Tensor, batch_data_samples) -> Iterator[None]:
        self._padding_mask = (batch_padding_mask(batch_inputs, batch_data_samples)
                              if batch_data_samples is not None else None)
        try:
            yield
        finally:
            self._padding_mask = None

    def extract_feat(self, batch_inputs: Tensor):
        features = self.backbone(batch_inputs, pad_mask=self._padding_mask)
        return self.neck(features) if self.with_neck else features

    def loss(self, batch_inputs, batch_data_samples):
        with self._padding_of(batch_inputs, batch_data_samples):
            return super().loss(batch_inputs, batch_data_samples)

    def predict(self, batch_inputs, batch_data_samples, rescale: bool = True):
        with self._padding_of(batch_inputs, batch_data_samples):
            return super().predict(batch_inputs, batch_data_samples, rescale=rescale)

    def _forward(self, batch_inputs, batch_data_samples=None):
        with self._padding_of(batch_inputs, batch_data_samples):
            return super()._forward(batch_inputs, batch_data_samples)


@MODELS.register_module()
class PaddingAwareMaskRCNN(PaddingAwareMixin, MaskRCNN):
    """:class:`mmdet.models.MaskRCNN` whose backbone sees the padding mask."""


@MODELS.register_module()
class PaddingAwareRetinaNet(PaddingAwareMixin, RetinaNet):
    """:class:`mmdet.models.RetinaNet` whose backbone sees the padding mask."""
