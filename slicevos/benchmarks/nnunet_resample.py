"""Resampling as nnU-Net v2 does it (``nnunetv2/preprocessing/resampling/default_resampling``),
with ``scipy.ndimage.zoom(grid_mode=True, mode="nearest")``: the routine behind skimage's
``resize(mode="edge", anti_aliasing=False)`` that nnU-Net calls. Arrays are float32 here
(nnU-Net converts to float64, which costs it more memory and time than this copy).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Triple = tuple[int, int, int]


def needs_separate_z(old: tuple[float, ...], new: tuple[float, ...], threshold: float) -> bool:
    """nnU-Net's rule: resample slices apart when either spacing is anisotropic (one low axis)."""
    for spacing in (old, new):
        if max(spacing) / min(spacing) > threshold:
            return sum(s == max(spacing) for s in spacing) == 1 and int(np.argmax(spacing)) == 0
    return False


def resample_volume(volume: np.ndarray, shape: Triple, separate_z: bool, order: int,
                    order_z: int = 0) -> np.ndarray:
    """(C, D, H, W) float -> (C, *shape) float32. With ``separate_z``: order ``order`` in-plane
    on each slice, then ``order_z`` across slices (z = axis 0); else ``order`` in 3D."""
    if tuple(volume.shape[1:]) == tuple(shape):
        return volume.astype(np.float32, copy=False)
    out = np.empty((volume.shape[0], *shape), np.float32)
    d, h, w = volume.shape[1:]
    for c in range(volume.shape[0]):
        if not separate_z:
            zoom = [n / o for n, o in zip(shape, (d, h, w), strict=True)]
            out[c] = ndimage.zoom(volume[c], zoom, order=order, mode="nearest", grid_mode=True)
            continue
        inplane = np.empty((d, *shape[1:]), np.float32)
        for z in range(d):
            inplane[z] = ndimage.zoom(volume[c, z], (shape[1] / h, shape[2] / w), order=order,
                                      mode="nearest", grid_mode=True)
        out[c] = inplane if d == shape[0] else ndimage.zoom(
            inplane, (shape[0] / d, 1, 1), order=order_z, mode="nearest", grid_mode=True)
    return out
