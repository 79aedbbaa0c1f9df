"""Post-processing of label volumes: the largest 3D connected component per organ."""

from __future__ import annotations

import cc3d
import numpy as np


def largest_component_per_class(labels: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Keep, for every label value > 0, only its largest connected component (``connectivity``
    6, 18 or 26 in 3D); other voxels of that value become 0. ``labels`` uint8 (D, H, W); a new
    array is returned. One connected-components pass labels every class at once."""
    components = cc3d.connected_components(labels, connectivity=connectivity)
    counts = np.bincount(components.ravel())
    if len(counts) <= 1:
        return labels.copy()
    # class of each component: the label value of any of its voxels
    component_class = np.zeros(len(counts), np.int64)
    component_class[components.ravel()] = labels.ravel()
    keep = np.zeros(len(counts), bool)
    for class_id in np.unique(component_class[1:]):
        members = np.flatnonzero(component_class == class_id)
        members = members[members > 0]
        keep[members[np.argmax(counts[members])]] = True
    return np.where(keep[components], labels, 0).astype(labels.dtype)
