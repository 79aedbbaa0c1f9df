"""Cross Pseudo Supervision pair: two different networks trained together, summed at inference.

``forward`` returns both networks' logits (for the CPS losses); ``predict_proba`` returns
``softmax(logits_a) + softmax(logits_b)``: float32 (B, K, H, W), values in [0, 2], summing to
2 over K, in train and eval mode alike and for any batch size (the batch axis is never
dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from slicevos.models.config import ModelConfig
from slicevos.models.registry import build_model


@dataclass(frozen=True)
class CPSConfig:
    """The two networks of the pair (paper: ``transunet`` and ``deeplabv3plus``)."""

    model_a: ModelConfig
    model_b: ModelConfig


class CPSPair(nn.Module):
    """Holds ``net_a`` and ``net_b``; ``output_stride`` is the lcm of theirs."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module) -> None:
        super().__init__()
        if net_a.num_classes != net_b.num_classes:
            raise ValueError(f"CPS networks disagree on num_classes: {net_a.num_classes} vs "
                             f"{net_b.num_classes}")
        self.net_a = net_a
        self.net_b = net_b
        self.num_classes = int(net_a.num_classes)
        self.in_channels = int(net_a.in_channels)
        self.output_stride = math.lcm(int(net_a.output_stride), int(net_b.output_stride))

    def forward(self, images: torch.Tensor, positions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W), positions (B,) -> (logits_a, logits_b), each (B, K, H, W)."""
        return self.net_a(images, positions), self.net_b(images, positions)

    def predict_proba(self, images: torch.Tensor, positions: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Sum of the two softmax probabilities, float32 (B, K, H, W) in [0, 2]."""
        logits_a, logits_b = self(images, positions)
        return torch.softmax(logits_a.float(), dim=1) + torch.softmax(logits_b.float(), dim=1)


def build_cps_pair(cfg: CPSConfig, num_classes: int, in_channels: int = 3) -> CPSPair:
    """Build both networks of ``cfg`` with ``num_classes`` outputs each."""
    return CPSPair(build_model(cfg.model_a, num_classes, in_channels),
                   build_model(cfg.model_b, num_classes, in_channels))
