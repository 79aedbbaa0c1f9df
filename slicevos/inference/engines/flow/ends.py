"""The flow engine's intensity end rule, the parts that need no engine state: how much of a
warped object still looks like the object (:func:`support`), where a run of low support
ends it (:class:`EndWatch`), and the slices a pass holds back until no end can take them
back (:func:`release`). The rule itself: ``slicevos.inference.engines.flow.engine``."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TypeVar

import cv2
import numpy as np

T = TypeVar("T")


def support(llr: np.ndarray, warped: np.ndarray, sigma: float, radius: float) -> float:
    """Fraction of the object's warped prediction (``warped`` > 0) whose grey values look
    like the object on its keys: ``llr`` (same shape, float32) > 0 after a Gaussian blur of
    ``sigma`` px, but at most a third of the object's ``radius`` (a wider blur mixes a thin
    vessel or a small gland with what is around it, so that not even its own key would look
    like it); 1 for an empty prediction."""
    predicted = warped > 0
    total = np.count_nonzero(predicted)
    if not total:
        return 1.0
    sigma = min(sigma, radius / 3)
    if sigma > 0:
        llr = cv2.GaussianBlur(llr, (0, 0), sigma)
    return np.count_nonzero(predicted & (llr > 0)) / total


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
