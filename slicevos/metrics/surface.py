"""Normalized surface Dice (NSD) through DeepMind's ``surface_distance`` package.

The official FLARE evaluation code is derived from that package, so the numbers match it. The
package crashes on an empty mask with NumPy 2 (``np.Inf``), so the FLARE empty rules are applied
here first: both empty -> 1; exactly one empty -> 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances


def union_bounding_box(
    gt: np.ndarray, pred: np.ndarray, margin: int = 1
) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``gt | pred`` grown by ``margin`` voxels (clipped to the
    array), or None when both are empty."""
    box = []
    for axis in range(gt.ndim):
        others = tuple(a for a in range(gt.ndim) if a != axis)
        hits = np.flatnonzero(np.any(gt, axis=others) | np.any(pred, axis=others))
        if hits.size == 0:
            return None
        lo, hi = int(hits[0]) - margin, int(hits[-1]) + 1 + margin
        box.append(slice(max(lo, 0), min(hi, gt.shape[axis])))
    return tuple(box)


def normalized_surface_dice(
    gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """NSD of two binary masks (2D or 3D) at ``tolerance_mm``.

    ``spacing`` is the voxel size in mm along the masks' axes (canonical ``(dz, dy, dx)`` for
    canonical volumes). Object faces on the array border count as surface (as in the package).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in shape: gt {gt.shape}, pred {pred.shape}")
    if len(spacing) != gt.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {gt.ndim}D masks")
    gt, pred = gt.astype(bool, copy=False), pred.astype(bool, copy=False)
    gt_any, pred_any = bool(gt.any()), bool(pred.any())
    if not gt_any and not pred_any:
        return 1.0
    if not gt_any or not pred_any:
        return 0.0
    box = union_bounding_box(gt, pred)
    with warnings.catch_warnings():
        # the package calls scipy.ndimage.filters/morphology, deprecated namespaces
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = compute_surface_distances(
            np.ascontiguousarray(gt[box]), np.ascontiguousarray(pred[box]),
            [float(s) for s in spacing],
        )
    return float(compute_surface_dice_at_tolerance(distances, float(tolerance_mm)))
