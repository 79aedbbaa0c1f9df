"""The flow engine's intensity end rule, the parts that need no engine state: how much of a
warped object still looks like the object (:func:`support`), its unlike regions cut out
(:func:`trim`), where a run of low support
ends it (:class:`EndWatch`), how a tapering object's tip goes on past that (:func:`tip_slope`,
:func:`level_cut`), and the slices a pass holds back until no end can take them
back (:func:`release`). The rule itself: ``slicevos.inference.engines.flow.engine``."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TypeVar

import cv2
import numpy as np

T = TypeVar("T")


def looks_like(llr: np.ndarray, sigma: float, radius: float) -> np.ndarray:
    """The object's log-likelihood ratio ``llr`` (float32, per pixel) blurred by ``sigma``
    px, but at most a third of the object's ``radius`` (a wider blur mixes a thin vessel or a
    small gland with what is around it, so that not even its own key would look like it):
    > 0 where the grey values around a pixel look like the object on its keys."""
    sigma = min(sigma, radius / 3)
    return cv2.GaussianBlur(llr, (0, 0), sigma) if sigma > 0 else llr


def support(looks: np.ndarray, warped: np.ndarray) -> float:
    """Fraction of the object's warped prediction (``warped`` > 0) that looks like the
    object (``looks`` > 0, same shape: :func:`looks_like`); 1 for an empty prediction."""
    predicted = warped > 0
    total = np.count_nonzero(predicted)
    if not total:
        return 1.0
    return np.count_nonzero(predicted & (looks > 0)) / total


def trim(warped: np.ndarray, looks: np.ndarray, confidence: np.ndarray, radius: int,
         below: float, floor: float) -> np.ndarray:
    """``warped`` (the object's distances warped onto a slice, > 0 inside) with what the flow
    carried it onto by mistake cut out (set to ``floor``): the pixels of its prediction
    that neither look like the object (``looks`` <= 0, :func:`looks_like`) nor match the
    key image warped there (the warp residual's ``confidence`` < ``below``), opened by a
    disc of ``radius`` px (0: every such pixel), all arrays the same shape. Past a liver's
    dome the flow lays it over the heart, past its tip over bowel: both differ from the liver
    and from what the key showed there. Either test alone cuts the object's own pixels (a
    kidney's rim, mixed with fat by partial volume, looks unlike it; a stomach's contents
    move)."""
    unlike = ((warped > 0) & (looks <= 0) & (confidence < below)).view(np.uint8)
    if radius > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        unlike = cv2.morphologyEx(unlike, cv2.MORPH_OPEN, disc)
    return np.where(unlike.view(bool), np.float32(floor), warped)


def tip_slope(areas: list[int], shrink: float) -> float | None:
    """The area an ending object loses per slice, from its last areas on the slices before
    its end (``areas``, pixels, oldest first; their mean change over the last 3), if it is
    tapering: its area-equivalent radius shrinks by ``shrink`` px or more per slice (a boundary
    that jitters by half a pixel changes the area by about ``pi r``, so a slower change is not
    a taper). None when it is not, or with fewer than 2 areas."""
    last = areas[-3:]
    if len(last) < 2:
        return None
    slope = (last[-1] - last[0]) / (len(last) - 1)
    radius = np.sqrt(last[-1] / np.pi)
    return slope if slope < 0 and -slope >= 2 * np.pi * radius * shrink else None


def level_cut(warped: np.ndarray, area: float, floor: float) -> np.ndarray:
    """``warped`` (signed distances, > 0 inside) lowered so that about ``area`` pixels stay
    inside: its level set of that area (the shape eroded along its own distances, narrow
    parts first, the way a tapering organ ends); unchanged if it holds fewer. Values stay at
    or above ``floor``."""
    inside = warped[warped > 0]
    keep = int(round(area))
    if keep >= len(inside):
        return warped
    if keep <= 0:
        return np.full_like(warped, floor)
    level = np.partition(inside, len(inside) - keep)[len(inside) - keep]
    # the kept pixels stay just above 0, the rest just below
    lowered = warped - level
    return np.where(warped >= level, np.maximum(lowered, np.float32(1e-3)),
                    np.clip(lowered, floor, np.float32(-1e-3))).astype(np.float32)


class EndWatch:
    """The intensity end rule with patience, per object along one pass (``step`` +1 or -1):
    an object ends where its support first falls low for ``patience`` slices in a row, so a
    dip of fewer slices (the flow drifting off a tube for a slice or two, then back) does not
    end it for good."""

    def __init__(self, patience: int, step: int) -> None:
        self.patience, self.step = patience, step
        self.low_since: dict[int, int] = {}
        self.ends: dict[int, int] = {}  # object -> the slice where it ended

    def update(self, object_id: int, z: int, low: bool) -> int | None:
        """Record slice ``z``; returns the slice where the object ends (the first of the low
        run, also kept in :attr:`ends`) once the run is ``patience`` slices long, else
        None."""
        if not low:
            self.low_since.pop(object_id, None)
            return None
        first = self.low_since.setdefault(object_id, z)
        if (z - first) * self.step + 1 < self.patience:
            return None
        self.ends[object_id] = first
        return first


def release(pending: deque[T], keep: int) -> Iterator[T]:
    """Yield the oldest held slices until ``keep`` are left."""
    while len(pending) > keep:
        yield pending.popleft()
