"""TransUNet (Chen et al. 2021): hybrid CNN + ViT encoder, cascaded upsampling decoder (CUP).

Defaults reproduce R50-ViT-B/16: a ResNetV2-50 (GroupNorm, weight-standardised convs, stages
of 3, 4 and 9 blocks) to stride 16, 12 ViT blocks of width 768 with 12 heads and MLP 3072,
decoder channels (256, 128, 64, 16) with skips at strides 8, 4 and 2; about 106 M parameters
with position embeddings for 512x512 input. Random init (no pretrained weights). Inputs must
have H and W divisible by 16 (``output_stride``); the caller pads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from slicevos.config import from_dict
from slicevos.models.checks import check_inputs
from slicevos.models.reference.position import SlicePositionFiLM
from slicevos.models.reference.transunet_encoder import HybridViTEncoder
from slicevos.models.registry import register_model


def _paper_backbone_kwargs() -> dict[str, Any]:
    return {"layers": [3, 4, 9], "preact": False, "norm_layer": "groupnorm",
            "conv_layer": "std_conv"}


@dataclass(frozen=True)
class TransUNetParams:
    """Keyword arguments of ``build_model(ModelConfig("transunet", params=...))``.

    ``backbone_kwargs`` go to ``timm.create_model(backbone, ...)`` and replace the default
    dict as a whole (``conv_layer: std_conv`` selects weight-standardised convolutions).
    ``img_size`` sets the stored position-embedding grid (``img_size // 16`` per side); other
    input sizes resample it.
    """

    img_size: int = 512
    backbone: str = "resnetv2_50"
    backbone_kwargs: dict[str, Any] = field(default_factory=_paper_backbone_kwargs)
    vit_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    decoder_head_channels: int = 512
    decoder_channels: tuple[int, ...] = (256, 128, 64, 16)
    position_frequencies: int = 6
    position_hidden: int = 64


class DecoderStage(nn.Module):
    """x2 bilinear upsampling, concatenation with an optional skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels + skip_channels, out_channels, 3, padding=1)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class TransUNet(nn.Module):
    """``forward(images (B, C, H, W) in [0, 1], positions (B,)) -> logits (B, K, H, W)``."""

    output_stride = 16

    def __init__(self, num_classes: int, in_channels: int = 3, position_encoding: bool = True,
                 params: TransUNetParams | None = None) -> None:
        super().__init__()
        p = params or TransUNetParams()
        if len(p.decoder_channels) != 4:
            raise ValueError(f"decoder_channels needs 4 entries (strides 8, 4, 2, 1), got "
                             f"{p.decoder_channels}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.encoder = HybridViTEncoder(
            p.backbone, p.backbone_kwargs, in_channels, p.img_size, p.vit_dim, p.vit_depth,
            p.vit_heads, p.mlp_ratio, p.dropout, p.attn_dropout, p.drop_path)
        self.decoder_head = ConvNormAct(p.vit_dim, p.decoder_head_channels, 3, padding=1)
        in_chs = (p.decoder_head_channels, *p.decoder_channels[:-1])
        skip_chs = (*self.encoder.skip_channels, 0)
        self.decoder = nn.ModuleList(
            DecoderStage(i, s, o) for i, s, o in zip(in_chs, skip_chs, p.decoder_channels, strict=True))
        self.segmentation_head = nn.Conv2d(p.decoder_channels[-1], num_classes, 3, padding=1)
        self.position = (SlicePositionFiLM(p.decoder_channels, p.position_frequencies,
                                           p.position_hidden) if position_encoding else None)

    def forward(self, images: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(images, positions, self.output_stride, "TransUNet", self.position is not None)
        x, skips = self.encoder(images)
        x = self.decoder_head(x)
        embedding = self.position.embed(positions) if self.position is not None else None
        for index, (stage, skip) in enumerate(zip(self.decoder, [*skips, None], strict=True)):
            x = stage(x, skip)
            if embedding is not None:
                x = self.position.modulate(index, x, embedding)
        return self.segmentation_head(x)


@register_model("transunet")
def transunet(num_classes: int, in_channels: int = 3, position_encoding: bool = True,
              **params: Any) -> TransUNet:
    """TransUNet from ``TransUNetParams`` keyword arguments (defaults: R50-ViT-B/16)."""
    return TransUNet(num_classes, in_channels, position_encoding,
                     from_dict(TransUNetParams, params, "transunet params"))
