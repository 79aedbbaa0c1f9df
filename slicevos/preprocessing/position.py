"""Relative slice position z / (D - 1): the value both reference networks are conditioned on
and that data sampling, validation and key-slice selection feed them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np
import torch


@overload
def relative_position(z: torch.Tensor, depth: int) -> torch.Tensor: ...
@overload
def relative_position(z: int | np.ndarray | Sequence[int], depth: int) -> np.ndarray: ...


def relative_position(z, depth):
    """Relative slice position ``z / (depth - 1)`` as float32 in [0, 1] (``depth == 1`` -> 0.5).

    ``z`` is a slice index or an array/tensor of indices (axis 0 of the canonical volume,
    inferior -> superior). Tensors give a float32 tensor on the same device; anything else a
    float32 numpy array (0-d for a scalar ``z``).
    """
    depth = int(depth)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if isinstance(z, torch.Tensor):
        bad = bool(((z < 0) | (z > depth - 1)).any())
        zf = z.to(torch.float32)
        result = torch.full_like(zf, 0.5) if depth == 1 else zf / (depth - 1)
    else:
        zf = np.asarray(z, dtype=np.float32)
        bad = bool(((zf < 0) | (zf > depth - 1)).any())
        result = np.full_like(zf, 0.5) if depth == 1 else zf / np.float32(depth - 1)
    if bad:
        raise ValueError(f"slice index out of range for a volume of {depth} slices: {z}")
    return result
