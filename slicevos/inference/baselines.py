"""Non-learned ways to fill a volume from key slices, the yardsticks for propagation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def nearest_key_copy(keys: Mapping[int, np.ndarray], depth: int) -> np.ndarray:
    """Every slice takes the labels of its nearest key slice (ties: the lower key).

    ``keys``: slice index -> (H, W) labels. Returns (depth, H, W) with the keys' dtype.
    """
    if not keys:
        raise ValueError("nearest_key_copy needs at least one key slice")
    indices = np.array(sorted(keys))
    if indices.min() < 0 or indices.max() >= depth:
        raise ValueError(f"key slices {indices.tolist()} are outside a volume of {depth} slices")
    distance = np.abs(np.arange(depth)[:, None] - indices[None, :])
    nearest = indices[np.argmin(distance, axis=1)]  # argmin takes the first (lower) on ties
    return np.stack([keys[int(z)] for z in nearest])
