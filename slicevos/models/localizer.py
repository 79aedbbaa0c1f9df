"""The abdomen localizer: a small timm classifier that scores one axial slice as abdomen or not.

From the two-stage FLARE23 paper (``seeds/two_stage_flare23.txt``): a ResNet-18 on the
abdomen window (L40/W400) resized to 256x256, one output per slice. Here the backbone is any
timm classifier (random init, ``pretrained=False``) taking the configured windows as channels
(default: the abdomen window alone, 1 channel).

The network resizes its input itself: ``forward`` accepts slices of any size and brings them to
``input_size`` x ``input_size`` with ``resize_slices`` (bilinear, antialiased when shrinking);
training batches are resized with the same function, so both see identical pixels. Not in the
segmentation registry (``slicevos.models.registry``): that contract is a segmentation network
``forward(images, positions) -> (B, K, H, W)``, a classifier returns ``(B,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from slicevos.config import check_fields
from slicevos.errors import InputError


@dataclass(frozen=True)
class LocalizerModelConfig:
    """``backbone``: a timm classification model name (random init); ``backbone_kwargs`` go to
    ``timm.create_model``; ``input_size``: side in pixels of the square the slices are resized to
    (paper: 256). The channel count comes from the windows (``LocalizerNet(in_channels=...)``)."""

    backbone: str = "resnet18"
    input_size: int = 256
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "model", {
            "backbone": (timm.is_model(self.backbone),
                         "a timm model name such as resnet18 or mobilenetv3_small_050"),
            "input_size": (self.input_size >= 16, "a side length >= 16 pixels, e.g. 256"),
        })


def resize_slices(images: torch.Tensor, size: int) -> torch.Tensor:
    """float (B, C, H, W) -> (B, C, size, size), bilinear (antialiased); unchanged if already
    that size. Non-square slices are stretched, as in the paper's 256x256 resampling."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


class LocalizerNet(nn.Module):
    """``forward(images)``: float (B, C, H, W) in [0, 1] (uint8 windows / 255), any H and W ->
    float (B,) logits, > 0 meaning abdomen (``torch.sigmoid`` gives the probability)."""

    def __init__(self, config: LocalizerModelConfig | None = None, in_channels: int = 1) -> None:
        super().__init__()
        self.config = config or LocalizerModelConfig()
        if in_channels < 1:
            raise InputError(None, f"the localizer needs at least one window channel, got "
                             f"{in_channels}", "configure data.windows, e.g. [abdomen]")
        self.in_channels = in_channels
        self.input_size = self.config.input_size
        self.backbone = timm.create_model(self.config.backbone, pretrained=False, num_classes=1,
                                          in_chans=in_channels, **self.config.backbone_kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise InputError(None, f"the localizer expects images (B, {self.in_channels}, H, W) "
                             f"(one channel per window it was trained on), got "
                             f"{tuple(images.shape)}", "window the slices with the localizer's "
                             "own windows (Localizer.windows) or pass HU to slice_scores_hu")
        return self.backbone(resize_slices(images, self.input_size))[:, 0]
