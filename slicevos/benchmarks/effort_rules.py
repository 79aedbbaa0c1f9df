"""Next-slice rules of the simulated annotator (``slicevos.benchmarks.effort``).

Every rule has one signature, ``rule(target) -> (z or None, fell_back)``: given what is wrong
now (:class:`Target`), the axial slice the user corrects next, never one of the target's own
key slices; None when the rule finds nothing to correct. The target is one organ (organ mode:
its truth, its prediction, its keys) or the whole label map (slice mode).

- ``suggested``: the page's "check next" list (``Labeler.suggestions``); its first entry that
  is not a key of the target; an empty list falls back to ``bisect`` (``fell_back`` True).
- ``bisect``: the middle of the longest gap between the target's keys and its true first and
  last slice (ties: lower z); a gap whose every slice is a key is skipped.
- ``error3d``: the CVPR 2025 interactive-segmentation challenge's rule: the largest 26-connected
  3D component of the error; the slice through its centre (mean z, rounded), or, if that is
  a key, the component's non-key slice with the most error voxels.
- ``oracle``: the non-key slice with the most wrong pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import cc3d
import numpy as np


@dataclass
class Target:
    """What a rule sees. ``wrong``: (D, H, W) bool, voxels whose label (for the organ, or any
    label in slice mode) differs from the truth; ``first``/``last``: the true z-extent;
    ``keys``: the target's key slices; ``labeler``: the page state (``suggested`` only);
    ``organ``: the organ id (None in slice mode)."""

    wrong: np.ndarray
    first: int
    last: int
    keys: set[int]
    labeler: Any = None
    organ: int | None = None


Pick = tuple[int | None, bool]  # (slice or None, fell back to another rule)
Rule = Callable[[Target], Pick]


def suggested(target: Target) -> Pick:
    """The labeller's first suggestion that is not a key of the target (else bisect)."""
    for z in target.labeler.suggestions(label=target.organ, k=8):
        if int(z) not in target.keys:
            return int(z), False
    return bisect(target)[0], True


def bisect(target: Target) -> Pick:
    """The free slice nearest the middle of the longest gap (see the module doc)."""
    points = sorted(target.keys | {target.first, target.last})
    gaps = sorted(pairwise(points), key=lambda gap: (-(gap[1] - gap[0]), gap[0]))
    for low, high in gaps:
        middle = (low + high) // 2
        free = [z for z in range(low, high + 1) if z not in target.keys]
        if free:
            return min(free, key=lambda z: (abs(z - middle), z)), False
    free = [z for z in range(target.first, target.last + 1) if z not in target.keys]
    return (free[0] if free else None), False


def error3d(target: Target) -> Pick:
    """Centre slice of the largest 26-connected error component (see the module doc)."""
    hit = np.flatnonzero(target.wrong.any(axis=(1, 2)))
    if not hit.size:
        return None, False
    low = int(hit[0])
    components = cc3d.connected_components(target.wrong[low:hit[-1] + 1], connectivity=26)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    for label in np.argsort(-sizes, kind="stable"):
        if sizes[label] == 0:
            break
        per_slice = (components == label).sum(axis=(1, 2))
        zs = np.flatnonzero(per_slice)
        centre = int(np.rint(np.average(zs, weights=per_slice[zs]))) + low
        if centre not in target.keys:
            return centre, False
        free = [(int(per_slice[z]), -z) for z in zs if z + low not in target.keys]
        if free:
            return -max(free)[1] + low, False
    return None, False


def oracle(target: Target) -> Pick:
    """The non-key slice with the most wrong pixels (None when every one is right)."""
    counts = target.wrong.sum(axis=(1, 2)).astype(np.int64)
    counts[sorted(target.keys)] = -1
    z = int(np.argmax(counts))
    return (z if counts[z] > 0 else None), False


RULES: dict[str, Rule] = {"suggested": suggested, "bisect": bisect, "error3d": error3d,
                          "oracle": oracle}
