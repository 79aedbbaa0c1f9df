"""CT windowing: HU volume -> stacked uint8 channels, one per window.

A window maps ``[level - width/2, level + width/2]`` HU linearly onto 0..255 and clips outside.
The default presets (why these values):

- ``abdomen`` L40 / W400 (-160..240 HU): the standard soft-tissue abdominal window; separates
  liver, spleen, kidneys, pancreas and vessels from fat.
- ``chest`` L-600 / W1500 (-1350..150 HU): the lung window; makes air, lung base and the
  diaphragm visible, which tells the networks where in z a slice is.
- ``spine`` L400 / W1800 (-500..1300 HU): the bone window; spine, ribs and pelvis as landmarks
  without saturating at the soft-tissue range.

Output stays uint8 in memory and on disk (lossless .npy, never JPEG); networks divide by 255.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    level: float
    width: float

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ValueError(f"window width must be > 0 HU, got {self.width}")

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


PRESETS: dict[str, Window] = {
    "abdomen": Window(40, 400),
    "chest": Window(-600, 1500),
    "spine": Window(400, 1800),
}
DEFAULT_WINDOWS: tuple[str, ...] = ("abdomen", "chest", "spine")


def resolve_windows(
    windows: Sequence[str | Window | Mapping[str, float]] = DEFAULT_WINDOWS,
) -> tuple[Window, ...]:
    """Accept preset names, ``Window`` objects or ``{"level": .., "width": ..}`` mappings."""
    out = []
    for w in windows:
        if isinstance(w, Window):
            out.append(w)
        elif isinstance(w, str):
            if w not in PRESETS:
                raise ValueError(f"unknown window preset {w!r}; known: {sorted(PRESETS)}")
            out.append(PRESETS[w])
        else:
            out.append(Window(float(w["level"]), float(w["width"])))
    if not out:
        raise ValueError("at least one window is needed")
    return tuple(out)


CHUNK_VOXELS = 1 << 20  # windowing works through this many voxels at a time (stays in cache)


def apply_window(hu: np.ndarray, window: Window, out: np.ndarray | None = None) -> np.ndarray:
    """Any-shape HU array -> uint8 of the same shape (into ``out`` when given):
    ``clip((hu - low) * 255 / width + 0.5, 0, 255)`` truncated, in float32, one chunk of the
    first axis at a time (no volume-sized temporaries)."""
    hu = np.asarray(hu)
    out = np.empty(hu.shape, np.uint8) if out is None else out
    if hu.size == 0:
        return out
    low, scale = np.float32(window.low), np.float32(255.0 / window.width)
    lead = hu if hu.ndim > 1 else hu[None]
    target = out if out.ndim > 1 else out[None]
    step = max(1, CHUNK_VOXELS // max(1, lead[0].size))
    buffer = np.empty((min(step, len(lead)), *lead.shape[1:]), np.float32)
    for start in range(0, len(lead), step):
        part = buffer[:len(lead[start:start + step])]
        part[...] = lead[start:start + step]  # to float32 first, as the arithmetic is
        np.subtract(part, low, out=part)
        np.multiply(part, scale, out=part)
        np.add(part, np.float32(0.5), out=part)
        np.clip(part, 0, 255, out=part)
        target[start:start + step] = part
    return out


def window_volume(
    hu: np.ndarray, windows: Sequence[str | Window | Mapping[str, float]] = DEFAULT_WINDOWS
) -> np.ndarray:
    """HU volume (D, H, W) -> uint8 (D, C, H, W), C = number of windows (3 by default).

    Also accepts a single slice (H, W) -> (C, H, W).
    """
    resolved = resolve_windows(windows)
    if hu.ndim not in (2, 3):
        raise ValueError(f"expected (D, H, W) or (H, W) HU array, got shape {hu.shape}")
    channel_axis = 0 if hu.ndim == 2 else 1
    out_shape = list(hu.shape)
    out_shape.insert(channel_axis, len(resolved))
    out = np.empty(out_shape, np.uint8)
    for c, w in enumerate(resolved):
        index = (c,) if hu.ndim == 2 else (slice(None), c)
        apply_window(hu, w, out=out[index])
    return out
