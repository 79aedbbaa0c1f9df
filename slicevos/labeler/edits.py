"""Drawing requests from the page, checked field by field and rasterised onto a label slice.

Bodies are JSON objects with exactly the fields listed; anything else (a missing or unknown
field, a wrong type, a value out of range, a path) is an :class:`InputError`, which the
server answers with 400 and the one-line message. Coordinates are slice pixels: ``x`` the
column, ``y`` the row of the axial slice.

- stroke ``{"z", "label", "tool": "brush"|"eraser", "radius", "points": [[x, y], ...]}``:
  the brush paints ``label`` over everything under the stroke; the eraser clears ``label``
  only (per organ: other organs under the eraser stay);
- fill ``{"z", "label", "x", "y"}``: the 4-connected region of the clicked pixel's value
  becomes ``label``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from slicevos.errors import InputError

TOOLS = ("brush", "eraser")
MAX_POINTS = 20000
MAX_RADIUS = 200


def check_fields(body: Any, required: Sequence[str]) -> Mapping[str, Any]:
    """``body`` as a JSON object with exactly the ``required`` fields."""
    if not isinstance(body, dict):
        raise InputError(None, "request body is not a JSON object", "send a JSON object")
    missing = [k for k in required if k not in body]
    unknown = sorted(set(body) - set(required))
    if missing or unknown:
        raise InputError(None, f"request fields: missing {missing}, unknown {unknown}",
                         f"send exactly {list(required)}")
    return body


def check_int(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an int in ``low..high`` (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(None, f"{name} must be an integer in {low}..{high}, got {value!r:.40}",
                         f"send {name} in {low}..{high}")
    return value


def check_points(points: Any, width: int, height: int, radius: int) -> np.ndarray:
    """(N, 2) int32 pixel positions from ``[[x, y], ...]`` (within ``radius`` of the slice)."""
    if not isinstance(points, list) or not 1 <= len(points) <= MAX_POINTS:
        raise InputError(None, f"points must be a list of 1..{MAX_POINTS} [x, y] pairs",
                         "send the stroke as [[x, y], ...] in slice pixels")
    out = np.empty((len(points), 2), np.int32)
    for i, point in enumerate(points):
        ok = (isinstance(point, list) and len(point) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in point))
        if not ok or not (-radius <= point[0] < width + radius
                          and -radius <= point[1] < height + radius):
            raise InputError(None, f"stroke point {i} ({point!r:.40}) is not an [x, y] pair on "
                             f"the {width}x{height} slice", "send points in slice pixels")
        out[i] = (round(point[0]), round(point[1]))
    return out


def paint_stroke(slice_labels: np.ndarray, points: np.ndarray, radius: int, label: int,
                 erase: bool) -> np.ndarray:
    """A copy of ``slice_labels`` (H, W) with a round-tipped stroke of ``radius`` px through
    ``points`` painted in ``label`` (or, ``erase``, ``label`` cleared under it)."""
    mask = np.zeros(slice_labels.shape, np.uint8)
    if len(points) == 1:
        cv2.circle(mask, tuple(int(v) for v in points[0]), radius, 1, -1)
    else:
        cv2.polylines(mask, [points.reshape(-1, 1, 2)], False, 1, 2 * radius + 1, cv2.LINE_8)
        for x, y in points[[0, -1]]:
            cv2.circle(mask, (int(x), int(y)), radius, 1, -1)
    out = slice_labels.copy()
    under = mask.astype(bool)
    if erase:
        out[under & (out == label)] = 0
    else:
        out[under] = label
    return out


def flood_fill(slice_labels: np.ndarray, x: int, y: int, label: int) -> np.ndarray:
    """A copy of ``slice_labels`` with the 4-connected region of pixel (``x``, ``y``) set to
    ``label``."""
    region = np.zeros((slice_labels.shape[0] + 2, slice_labels.shape[1] + 2), np.uint8)
    work = slice_labels.copy()
    cv2.floodFill(work, region, (x, y), 0, 0, 0, 4 | cv2.FLOODFILL_MASK_ONLY | (1 << 8))
    out = slice_labels.copy()
    out[region[1:-1, 1:-1].astype(bool)] = label
    return out
