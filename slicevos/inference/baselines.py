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


def contour_interpolation(keys: Mapping[int, np.ndarray], depth: int) -> np.ndarray:
    """ITK's morphological contour interpolation (Zukic et al.) between the key slices, per
    label, along the slice axis. Slices beyond the outermost keys stay background (it does not
    extrapolate). Needs the optional ``itk-morphologicalcontourinterpolation`` package
    (``pip install "slicevos[interp]"``)."""
    try:
        import itk
    except ImportError:
        from slicevos.errors import InputError

        raise InputError(None, "contour interpolation needs ITK, which is not installed",
                         'pip install "slicevos[interp]"') from None
    if not keys:
        raise ValueError("contour_interpolation needs at least one key slice")
    first = next(iter(keys.values()))
    stack = np.zeros((depth, *first.shape), dtype=np.uint8)
    for z, labels in keys.items():
        if not 0 <= z < depth:
            raise ValueError(f"key slice {z} is outside a volume of {depth} slices")
        stack[z] = labels
    interpolator = itk.MorphologicalContourInterpolator.New(itk.image_from_array(stack))
    interpolator.SetAxis(2)  # ITK orders axes (x, y, z): numpy axis 0 (slices) is ITK axis 2
    interpolator.Update()
    out = itk.array_from_image(interpolator.GetOutput()).astype(np.uint8)
    for z, labels in keys.items():
        out[z] = labels  # keys come out exactly as given
    return out
