"""In-plane pixel size: the grid a slice takes when resampled to another spacing."""

from __future__ import annotations

from collections.abc import Sequence


def resampled_size(size: Sequence[int], spacing: Sequence[float], target_mm: float | None
                   ) -> tuple[int, int] | None:
    """(h, w) of a slice of ``size`` (h, w) pixels at ``spacing`` (dy, dx) mm once resampled
    to ``target_mm`` pixels, or None when it keeps its size (or ``target_mm`` is None)."""
    if target_mm is None:
        return None
    out = tuple(max(1, round(n * s / target_mm)) for n, s in zip(size, spacing, strict=True))
    return None if out == tuple(size) else out
