"""Slice-position encoding: condition a decoder on where the slice lies in the volume.

Choice (the same in both reference networks): the relative position ``p = z / (D - 1)`` in
[0, 1] (0 = most inferior slice; a one-slice volume gives 0.5) becomes sinusoidal features
``sin(2^k pi p), cos(2^k pi p)`` for ``k < num_frequencies``, then a small MLP (two linear
layers with SiLU) gives an embedding, and one linear head per conditioned feature map turns
the embedding into FiLM parameters: ``features * (1 + gamma) + beta`` per channel.
The heads start with small random weights (std ``init_std``) and zero bias, so at
initialisation the modulation is close to the identity yet the position already changes the
output (exact zeros would make the gradient reach the MLP only through the head's bias).

Where it enters: TransUNet modulates the output of every decoder stage; DeepLabV3+ modulates
the decoder output before the segmentation head. FiLM (rather than an extra input channel)
keeps the encoders unchanged, so any timm / smp backbone works, and the position acts on the
whole decoder instead of being diluted through the first convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from slicevos.preprocessing.position import relative_position  # noqa: F401  (re-export)


def sinusoidal_features(positions: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """(B,) positions -> (B, 2 * num_frequencies): ``sin(2^k pi p)``, ``cos(2^k pi p)``."""
    freqs = math.pi * 2.0 ** torch.arange(num_frequencies, device=positions.device,
                                          dtype=torch.float32)
    angles = positions.to(torch.float32)[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SlicePositionFiLM(nn.Module):
    """Positions (B,) -> per-channel FiLM of one or more feature maps.

    ``channels[i]`` is the channel count of the i-th conditioned feature map. Use
    ``embedding = film.embed(positions)`` once per forward, then
    ``film.modulate(i, features, embedding)`` for each map.
    """

    def __init__(self, channels: Sequence[int], num_frequencies: int = 6, hidden_dim: int = 64,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.num_frequencies = int(num_frequencies)
        self.mlp = nn.Sequential(
            nn.Linear(2 * self.num_frequencies, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(hidden_dim, 2 * c) for c in channels)
        for head in self.heads:
            nn.init.normal_(head.weight, std=init_std)
            nn.init.zeros_(head.bias)

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        """(B,) relative positions -> (B, hidden_dim)."""
        return self.mlp(sinusoidal_features(positions, self.num_frequencies).to(
            self.heads[0].weight.dtype))

    def modulate(self, index: int, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """``features`` (B, C, H, W) * (1 + gamma) + beta, with (gamma, beta) from head ``index``."""
        gamma, beta = self.heads[index](embedding).to(features.dtype)[:, :, None, None].chunk(2, dim=1)
        return features * (1 + gamma) + beta
