"""Per-slice uncertainty measures, all fractions in [0, 1] of a slice's foreground pixels.

- :func:`label_disagreement`: two label maps of the same slice (the two CPS networks, or the
  forward and backward propagation passes) differ on that fraction of the pixels either calls
  foreground.
- :func:`low_confidence`: for slices seen by one propagation direction only (beyond the
  outermost key): 1 - the mean top probability over the pixels predicted foreground.
"""

from __future__ import annotations

import torch


def label_disagreement(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Label maps (N, H, W) -> (N,) float32: the fraction of the pixels that either map calls
    foreground (> 0) on which the two differ; 0 where both are all background."""
    foreground = (labels_a > 0) | (labels_b > 0)
    differ = (labels_a != labels_b) & foreground
    return differ.flatten(1).sum(1).float() / foreground.flatten(1).sum(1).clamp(min=1).float()


def low_confidence(probabilities: torch.Tensor) -> torch.Tensor:
    """Probabilities (N, L, H, W) with background at channel 0 -> (N,) float32: 1 - the mean
    top probability over the pixels whose argmax is foreground (0 when there is none)."""
    top, label = probabilities.max(dim=1)
    foreground = label > 0
    total = (top * foreground).flatten(1).sum(1)
    count = foreground.flatten(1).sum(1)
    return torch.where(count > 0, 1 - total / count.clamp(min=1), torch.zeros_like(total)).float()
