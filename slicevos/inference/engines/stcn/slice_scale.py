"""The grid a propagation network sees: small slices upsampled in-plane before the network.

A network trained on 256-pixel crops of 512x512 scans reads a 122x101 slice of a 3 mm scan as
an 8x7 feature map at stride 16, too coarse for its memory read. :class:`SliceScaler`
upsamples such slices by an integer factor (bilinear images, nearest labels, signed-distance
priors scaled with the pixels) and brings the network's scores back to the session's grid by
averaging each factor x factor block, so the session, the flow engine and every caller keep
the scan's own grid. Factor 1 is the identity (only the padding to the network stride).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slicevos.preprocessing.padding import crop_to, pad_to_multiple, upsample_factor

__all__ = ["NETWORK_UPSAMPLE_BELOW", "SliceScaler", "upsample_factor"]

NETWORK_UPSAMPLE_BELOW = 256  # build_propagator and InferenceConfig (docs/propagation.md)


@dataclass(frozen=True)
class SliceScaler:
    """Between a session's (``height``, ``width``) grid and the network's: ``factor`` times
    larger, padded to a multiple of ``stride``. Tensors are torch, any device."""

    height: int
    width: int
    factor: int
    stride: int

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> (B, C, H'', W''): upsampled (bilinear), padded with 0."""
        if self.factor > 1:
            images = F.interpolate(images, scale_factor=self.factor, mode="bilinear",
                                   align_corners=False)
        return pad_to_multiple(images, self.stride)

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """(H, W) integer labels -> (H'', W''): each pixel repeated, padded with 0."""
        if self.factor > 1:
            labels = labels.repeat_interleave(self.factor, 0).repeat_interleave(self.factor, 1)
        return pad_to_multiple(labels, self.stride)

    def prior(self, prior: torch.Tensor, floor: float) -> torch.Tensor:
        """(L, H, W) signed distances in session pixels -> (L, H'', W'') in network pixels:
        upsampled, times ``factor``, kept within ``±|floor|`` (the range the network was
        trained on), padded with ``floor``."""
        if self.factor > 1:
            prior = F.interpolate(prior[None].float(), scale_factor=self.factor,
                                  mode="bilinear", align_corners=False)[0] * self.factor
            prior = prior.clamp(-abs(floor), abs(floor))
        return pad_to_multiple(prior, self.stride, value=floor)

    def scores(self, scores: torch.Tensor, distances: bool = False) -> torch.Tensor:
        """(L, H'', W'') network scores -> (L, H, W) on the session grid: cropped, each
        factor x factor block averaged; ``distances`` (pixel units) are also divided by it."""
        scores = crop_to(scores, self.height * self.factor, self.width * self.factor)
        if self.factor == 1:
            return scores
        pooled = F.avg_pool2d(scores[None].float(), self.factor)[0]
        return pooled / self.factor if distances else pooled
