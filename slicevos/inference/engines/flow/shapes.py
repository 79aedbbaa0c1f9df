"""What the flow engine keeps of a key slice: each object's clipped signed distance (the
shape it warps) and an intensity model of each object (to end organs the flow cannot end).

Signed distance ``s`` (pixels): positive inside the object, negative outside, the boundary at
0, clipped to ``[floor, clip]``; stored as a crop around the object (its box grown by
``clip``: outside the crop ``s = floor``). ``floor`` is ``-clip``, or with ``outside_depth``
``-min(clip, outside_depth * r)`` with ``r`` the radius of the object's largest part: far
outside an object counts no more than the object being absent, so a part on one key that
lies far from every part on the other key (one of several lesions) fades the way an object
on one key only does, instead of vanishing next to its key. A weighted mean of two such maps
interpolates the shape between two keys (an organ on one key only shrinks and vanishes on
the way).

Intensity model: for each object, the histogram of its pixels on the key slices against the
histogram of a ring around it (``ring`` pixels wide), smoothed; ``llr[v] = log p(v | object)
- log p(v | ring)`` per uint8 grey value of the abdomen window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from slicevos.data.optical_flow import signed_distance


@dataclass
class ObjectShape:
    """One object on one key: ``distance`` crop (h, w) float32 at rows ``top`` and columns
    ``left`` of the slice; ``radius``: sqrt(area / pi) in pixels; ``floor`` (< 0) its value
    outside the crop (module doc)."""

    distance: np.ndarray
    top: int
    left: int
    radius: float
    floor: float


def key_shapes(labels: np.ndarray, clip: float,
               outside_depth: float | None = None) -> dict[int, ObjectShape]:
    """Object id -> :class:`ObjectShape` for every object on the key ``labels`` (H, W);
    ``outside_depth`` sets the floor of the signed distances (module doc; None: ``-clip``)."""
    height, width = labels.shape
    margin = int(np.ceil(clip)) + 1
    shapes: dict[int, ObjectShape] = {}
    for object_id in np.unique(labels):
        if object_id == 0:
            continue
        mask = labels == object_id
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        top, bottom = max(0, rows[0] - margin), min(height, rows[-1] + margin + 1)
        left, right = max(0, cols[0] - margin), min(width, cols[-1] + margin + 1)
        crop = mask[top:bottom, left:right]
        floor = -clip
        if outside_depth is not None:
            _, _, stats, _ = cv2.connectedComponentsWithStats(crop.astype(np.uint8),
                                                              connectivity=8)
            largest = float(stats[1:, cv2.CC_STAT_AREA].max())
            floor = -min(clip, outside_depth * float(np.sqrt(largest / np.pi)))
        distance = np.clip(signed_distance(crop), floor, clip)
        # the crop border is not the object's border: pixels there are outside by >= margin
        shapes[int(object_id)] = ObjectShape(np.ascontiguousarray(distance), int(top),
                                             int(left), float(np.sqrt(mask.sum() / np.pi)),
                                             floor)
    return shapes


def intensity_models(keys: Iterable[tuple[np.ndarray, np.ndarray]], ring: int = 7,
                     smooth: float = 4.0, floor: float = 1e-3) -> dict[int, np.ndarray]:
    """Object id -> llr (256,) float32 from ``(grey (H, W) uint8, labels (H, W))`` key pairs."""
    inside: dict[int, np.ndarray] = {}
    around: dict[int, np.ndarray] = {}
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))
    for grey, labels in keys:
        for object_id in np.unique(labels):
            if object_id == 0:
                continue
            mask = (labels == object_id).astype(np.uint8)
            band = cv2.dilate(mask, kernel).astype(bool) & ~mask.astype(bool)
            inside.setdefault(int(object_id), np.zeros(256)).__iadd__(
                np.bincount(grey[mask.astype(bool)], minlength=256))
            around.setdefault(int(object_id), np.zeros(256)).__iadd__(
                np.bincount(grey[band], minlength=256))
    return {o: _log_ratio(inside[o], around[o], smooth, floor) for o in inside}


def _log_ratio(inside: np.ndarray, around: np.ndarray, smooth: float,
               floor: float) -> np.ndarray:
    def density(hist: np.ndarray) -> np.ndarray:
        blurred = cv2.GaussianBlur(hist.astype(np.float32)[None], (0, 0), smooth)[0]
        return blurred / max(float(blurred.sum()), 1.0) + floor / 256

    return np.log(density(inside) / density(around)).astype(np.float32)
