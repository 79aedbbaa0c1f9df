"""STCN decoder: memory readout + key features -> mask logits at the input size.

readout (B, O, Cv, h, w) is fused with f16, upsampled to stride 8 and stride 4 with the key
encoder's skips, projected to ``out_channels`` (1 logit per object, or K class logits in joint
mode) and bilinearly upsampled x4. Skip convolutions run once per slice and are broadcast over
objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slicevos.models.propagation.encoders import FusionBlock, KeyFeatures, ResBlock


class UpsampleBlock(nn.Module):
    """x2 upsampling of per-object ``x`` (B, O, Cx, h, w) + a 3x3 convolution of the per-slice
    ``skip`` (B, Cs, 2h, 2w) to Cx channels, then a residual block to ``out_channels``."""

    def __init__(self, skip_channels: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, in_channels, 3, padding=1)
        self.block = ResBlock(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        batch, objects = x.shape[:2]
        up = F.interpolate(x.flatten(0, 1), scale_factor=2, mode="bilinear", align_corners=False)
        merged = up.view(batch, objects, *up.shape[1:]) + self.skip_conv(skip).unsqueeze(1)
        out = self.block(merged.flatten(0, 1))
        return out.view(batch, objects, *out.shape[1:])


class Decoder(nn.Module):
    """``forward(features, readout (B, O, Cv, h, w)) -> (B, O, out_channels, 16h, 16w)``."""

    def __init__(self, value_dim: int, key_channels: Sequence[int], widths: Sequence[int],
                 out_channels: int, prior_logit_clip: float | None = None,
                 correction_limit: float | None = None) -> None:
        super().__init__()
        c4, c8, c16 = key_channels
        self.compress = FusionBlock(value_dim, c16, widths[0])
        self.up_16_8 = UpsampleBlock(c8, widths[0], widths[1])
        self.up_8_4 = UpsampleBlock(c4, widths[1], widths[2])
        self.predict = nn.Conv2d(widths[2], out_channels, 3, padding=1)
        self.prior_logit_clip = prior_logit_clip
        self.correction_limit = correction_limit
        if prior_logit_clip is not None:
            self.prior_16 = nn.Conv2d(out_channels, widths[0], 3, padding=1)
            self.prior_4 = nn.Conv2d(out_channels, widths[2], 3, padding=1)
            nn.init.zeros_(self.predict.weight)
            nn.init.zeros_(self.predict.bias)

    def _prior_features(self, conv: nn.Module, prior: torch.Tensor, stride: int
                        ) -> torch.Tensor:
        """(B, O, L, H, W) prior logits -> (B, O, C, H/stride, W/stride) features."""
        pooled = F.avg_pool2d(prior.flatten(0, 1) / self.prior_logit_clip, stride)
        out = conv(pooled)
        return out.view(*prior.shape[:2], *out.shape[1:])

    def forward(self, features: KeyFeatures, readout: torch.Tensor,
                prior: torch.Tensor | None = None) -> torch.Tensor:
        """``prior``: (B, O, out_channels, H, W) logits, only for a decoder built with
        ``prior_logit_clip``."""
        batch, objects = readout.shape[:2]
        x = self.compress(readout, features.f16)
        if prior is not None:
            x = x + self._prior_features(self.prior_16, prior, 16)
        x = self.up_16_8(x, features.f8)
        x = self.up_8_4(x, features.f4)
        if prior is not None:
            x = x + self._prior_features(self.prior_4, prior, 4)
        logits = self.predict(F.relu(x.flatten(0, 1)))
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        logits = logits.view(batch, objects, *logits.shape[1:])
        if prior is None:
            return logits
        if self.correction_limit is not None:
            logits = self.correction_limit * torch.tanh(logits / self.correction_limit)
        return logits + prior
