"""DeepLabV3+ from segmentation-models-pytorch, with slice-position FiLM before the head.

Default encoder: EfficientNet-B3 (random init), as in the paper. Any smp encoder name or a
timm encoder through smp's ``tu-`` prefix works (``encoder_name: tu-mobilenetv3_large_100``).
The encoder is dilated to ``encoder_output_stride`` (16 by default), so H and W must be
divisible by ``output_stride`` = smp's ``encoder.output_stride`` (16 for the defaults, not 32).
In train mode the batch needs >= 2 images (BatchNorm after the ASPP image-pooling branch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from slicevos.config import from_dict
from slicevos.models.checks import check_inputs
from slicevos.models.reference.position import SlicePositionFiLM
from slicevos.models.registry import register_model


@dataclass(frozen=True)
class DeepLabV3PlusParams:
    """Keyword arguments of ``build_model(ModelConfig("deeplabv3plus", params=...))``; the
    ``encoder_*`` and ``decoder_*`` ones are smp's ``DeepLabV3Plus`` arguments, and
    ``encoder_kwargs`` go to the smp/timm encoder."""

    encoder_name: str = "efficientnet-b3"
    encoder_depth: int = 5
    encoder_output_stride: int = 16
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    decoder_channels: int = 256
    decoder_atrous_rates: tuple[int, ...] = (12, 24, 36)
    decoder_aspp_separable: bool = True
    decoder_aspp_dropout: float = 0.5
    position_frequencies: int = 6
    position_hidden: int = 64


class DeepLabV3Plus(nn.Module):
    """``forward(images (B, C, H, W) in [0, 1], positions (B,)) -> logits (B, K, H, W)``.

    ``self.smp_model`` is the smp network; its encoder, decoder and head run in turn with the
    FiLM between decoder and head.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, position_encoding: bool = True,
                 params: DeepLabV3PlusParams | None = None) -> None:
        super().__init__()
        p = params or DeepLabV3PlusParams()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.smp_model = smp.create_model(
            "deeplabv3plus", encoder_name=p.encoder_name, encoder_weights=None,
            encoder_depth=p.encoder_depth, encoder_output_stride=p.encoder_output_stride,
            decoder_channels=p.decoder_channels, decoder_atrous_rates=tuple(p.decoder_atrous_rates),
            decoder_aspp_separable=p.decoder_aspp_separable,
            decoder_aspp_dropout=p.decoder_aspp_dropout, in_channels=in_channels,
            classes=num_classes, **p.encoder_kwargs)
        self.output_stride = int(self.smp_model.encoder.output_stride)
        # smp's EfficientNet encoders keep their classifier's conv and norm (_conv_head, _bn1),
        # which segmentation never runs: trainable parameters without gradients break DDP
        for unused in ("_conv_head", "_bn1"):
            module = getattr(self.smp_model.encoder, unused, None)
            if isinstance(module, nn.Module):
                module.requires_grad_(False)
        self.position = (SlicePositionFiLM([p.decoder_channels], p.position_frequencies,
                                           p.position_hidden) if position_encoding else None)

    def forward(self, images: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(images, positions, self.output_stride, "DeepLabV3Plus",
                     self.position is not None)
        features = self.smp_model.encoder(images)
        x = self.smp_model.decoder(features)
        if self.position is not None:
            x = self.position.modulate(0, x, self.position.embed(positions))
        return self.smp_model.segmentation_head(x)


@register_model("deeplabv3plus")
def deeplabv3plus(num_classes: int, in_channels: int = 3, position_encoding: bool = True,
                  **params: Any) -> DeepLabV3Plus:
    """DeepLabV3+ from ``DeepLabV3PlusParams`` keyword arguments (defaults: EfficientNet-B3)."""
    return DeepLabV3Plus(num_classes, in_channels, position_encoding,
                         from_dict(DeepLabV3PlusParams, params, "deeplabv3plus params"))
