"""Pad slices to a network stride and crop results back (no resampling, ever)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Smallest (H', W') >= (height, width) with both divisible by ``multiple``."""
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad the last two axes (H, W) at the bottom/right so both are multiples of ``multiple``.

    The original content stays at ``[..., :H, :W]``; crop results back with :func:`crop_to`.
    """
    height, width = x.shape[-2:]
    target_h, target_w = padded_size(height, width, multiple)
    if (target_h, target_w) == (height, width):
        return x
    return F.pad(x, (0, target_w - width, 0, target_h - height), value=value)


def crop_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: keep ``[..., :height, :width]``."""
    return x[..., :height, :width]
