"""Scoring propagation from key slices: per-organ DSC on the non-key slices, split into the
organ's *end* slices and its *bulk*.

End slices of an organ: the non-key slices beyond the outermost key slices, or within
``margin`` slices of the ground truth's first or last slice of that organ. Bulk: every other
non-key slice. DSC is computed over the slices of a split as one 3D overlap; an organ with
neither truth nor prediction on a split's slices is left out of that split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from slicevos.metrics.overlap import dice

SPLITS = ("all", "bulk", "ends")


def end_slices(truth: np.ndarray, class_id: int, keys: Sequence[int],
               margin: int = 5) -> np.ndarray:
    """(D,) bool: the end slices of organ ``class_id`` (see the module doc), keys excluded."""
    depth = len(truth)
    ends = np.zeros(depth, bool)
    ends[:min(keys)] = True
    ends[max(keys) + 1:] = True
    present = np.nonzero((truth == class_id).any(axis=(1, 2)))[0]
    if len(present):
        for edge in (present[0], present[-1]):
            ends[max(0, edge - margin):edge + margin + 1] = True
    ends[list(keys)] = False
    return ends


def split_dice(truth: np.ndarray, pred: np.ndarray, keys: Sequence[int],
               class_ids: Iterable[int], margin: int = 5) -> dict[str, dict[int, float]]:
    """Split -> class id -> DSC of ``pred`` against ``truth`` (D, H, W) on that split's slices
    (``all``: every non-key slice). Organs absent from both on a split are left out."""
    non_key = np.ones(len(truth), bool)
    non_key[list(keys)] = False
    scores: dict[str, dict[int, float]] = {split: {} for split in SPLITS}
    for class_id in class_ids:
        ends = end_slices(truth, class_id, keys, margin)
        for split, chosen in (("all", non_key), ("bulk", non_key & ~ends), ("ends", ends)):
            t, p = truth[chosen] == class_id, pred[chosen] == class_id
            if t.any() or p.any():
                scores[split][class_id] = dice(t, p)
    return scores
