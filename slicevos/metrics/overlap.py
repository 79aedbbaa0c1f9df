"""Dice similarity coefficient (DSC) with the FLARE rules for empty masks.

Both empty -> 1; exactly one empty -> 0; otherwise ``2 |G & P| / (|G| + |P|)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def dice_from_counts(intersection: int, gt_count: int, pred_count: int) -> float:
    """DSC from voxel counts, with the empty rules (both 0 -> 1.0)."""
    total = gt_count + pred_count
    if total == 0:
        return 1.0
    return 2.0 * intersection / total


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """DSC of two binary masks of the same shape (any dtype; non-zero is foreground)."""
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in shape: gt {gt.shape}, pred {pred.shape}")
    gt, pred = gt.astype(bool, copy=False), pred.astype(bool, copy=False)
    inter = int(np.count_nonzero(gt & pred))
    return dice_from_counts(inter, int(np.count_nonzero(gt)), int(np.count_nonzero(pred)))


def dice_per_class(
    gt_labels: np.ndarray, pred_labels: np.ndarray, class_ids: Iterable[int]
) -> dict[int, float]:
    """DSC of every class over all voxels, from one confusion count (``bincount(gt*K + pred)``).

    For integer label maps in 0..255 of the same shape. This is the plain per-class DSC (e.g. for
    validation during training); the FLARE slice rule for aorta/IVC/esophagus is applied by
    :func:`slicevos.metrics.flare.score_case`.
    """
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(f"label maps differ in shape: gt {gt_labels.shape}, pred {pred_labels.shape}")
    class_ids = list(class_ids)
    k = max([int(gt_labels.max(initial=0)), int(pred_labels.max(initial=0)), *class_ids]) + 1
    codes = gt_labels.astype(np.intp).ravel() * k + pred_labels.astype(np.intp).ravel()
    confusion = np.bincount(codes, minlength=k * k).reshape(k, k)
    gt_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    return {
        c: dice_from_counts(int(confusion[c, c]), int(gt_counts[c]), int(pred_counts[c]))
        for c in class_ids
    }
