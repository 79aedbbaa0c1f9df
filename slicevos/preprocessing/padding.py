"""Pad slices to a network stride and crop results back (no resampling here), and the factor
by which small slices are upsampled before flow or a network (the resampling lives with them:
``slicevos.data.optical_flow``, ``slicevos.inference.engines.stcn.slice_scale``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Smallest (H', W') >= (height, width) with both divisible by ``multiple``."""
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


MAX_UPSAMPLE_FACTOR = 2


def upsample_factor(height: int, width: int, upsample_below: int,
                    max_factor: int = MAX_UPSAMPLE_FACTOR) -> int:
    """1, or the smallest integer (at most ``max_factor``) that brings the longer side of a
    slice smaller than ``upsample_below`` pixels to at least that size (0: never)."""
    largest = max(height, width)
    if upsample_below <= 0 or largest >= upsample_below:
        return 1
    return int(min(max_factor, math.ceil(upsample_below / largest)))


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
