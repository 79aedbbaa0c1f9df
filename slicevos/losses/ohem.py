"""Online hard example mining cross-entropy (bootstrapped CE), as the STCN propagation module
is trained: the loss is the mean cross-entropy of the hardest ``ratio`` of all pixels.

Most pixels of a clip are easy background; averaging over every pixel drowns the organ edges
that matter. Early in training every pixel counts (``ratio`` 1, plain CE); over the warm-up the
ratio decays linearly to ``top_ratio`` (0.15 in STCN). The ratio is a function of the training
step that the caller passes in, never internal state, so a resumed run computes the same loss.

Shapes: logits float (B, K, H, W) (for aggregated multi-object predictions K = objects + 1,
channel 0 background); target int64 (B, H, W) class ids, ``ignore_index`` pixels left out.
The softmax is taken once (``F.cross_entropy``), in float32 whatever the logits' dtype (AMP).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_class_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    """Raise ValueError unless logits are (B, K, H, W) and target (B, H, W) holds integer ids
    in 0..K-1 or ``ignore_index``."""
    if logits.ndim != 4 or tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"expected logits (B, K, H, W) and target (B, H, W), got logits "
                         f"{tuple(logits.shape)} and target {tuple(target.shape)}")
    if target.dtype.is_floating_point:
        raise ValueError(f"target must hold integer class ids, got {target.dtype}")
    kept = target[target != ignore_index]
    if kept.numel() and bool(((kept < 0) | (kept >= logits.shape[1])).any()):
        raise ValueError(f"target must hold class ids in 0..{logits.shape[1] - 1} (or "
                         f"ignore_index {ignore_index}), got {kept.min().item()}.."
                         f"{kept.max().item()}")


class OhemCrossEntropy(nn.Module):
    """Mean cross-entropy over the hardest pixels of the batch.

    ``forward(logits, target, step=None, ratio=None) -> scalar``: the pixels of the whole batch
    (not ignored) are ranked by their cross-entropy and the top ``floor(ratio * n)`` (at least
    one) averaged.
    Give either ``step`` (the ratio is ``self.ratio(step)``) or ``ratio`` in (0, 1]; with
    neither, ``top_ratio`` is used. With no pixel left (all ignored) the loss is 0.

    ``ratio(step)``: 1.0 up to ``warmup_start``, then linear down to ``top_ratio`` at
    ``warmup_end``, ``top_ratio`` after. STCN uses warm-up 20k -> 70k of 300k iterations.
    """

    def __init__(self, top_ratio: float = 0.15, warmup_start: int = 0, warmup_end: int = 0,
                 ignore_index: int = -100) -> None:
        super().__init__()
        if not 0 < top_ratio <= 1:
            raise ValueError(f"top_ratio must be in (0, 1], got {top_ratio}")
        if not 0 <= warmup_start <= warmup_end:
            raise ValueError(f"need 0 <= warmup_start <= warmup_end, got {warmup_start} and "
                             f"{warmup_end}")
        self.top_ratio, self.ignore_index = top_ratio, ignore_index
        self.warmup_start, self.warmup_end = warmup_start, warmup_end

    def ratio(self, step: int) -> float:
        """Fraction of pixels averaged at training step ``step``."""
        if step < self.warmup_start:
            return 1.0
        if step >= self.warmup_end:
            return self.top_ratio
        done = (step - self.warmup_start) / (self.warmup_end - self.warmup_start)
        return 1.0 + (self.top_ratio - 1.0) * done

    def forward(self, logits: torch.Tensor, target: torch.Tensor, step: int | None = None,
                ratio: float | None = None) -> torch.Tensor:
        check_class_target(logits, target, self.ignore_index)
        if step is not None and ratio is not None:
            raise ValueError("give step or ratio, not both")
        if step is not None:
            ratio = self.ratio(step)
        elif ratio is None:
            ratio = self.top_ratio
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        pixel_loss = F.cross_entropy(logits.float(), target.long(), reduction="none",
                                     ignore_index=self.ignore_index)
        pixel_loss = pixel_loss[target != self.ignore_index]
        if pixel_loss.numel() == 0:
            return logits.float().sum() * 0.0
        count = max(1, math.floor(ratio * pixel_loss.numel() + 1e-6))  # no float round-off
        if count == pixel_loss.numel():
            return pixel_loss.mean()
        return pixel_loss.topk(count, sorted=False).values.mean()
