"""Per-slice scores kept as boxes: what the flow engine yields instead of a dense (L, H, W)
tensor, so that labelling and fusing a slice cost in proportion to the objects' area, not
to the object count times the slice.

Channel 0 (background) scores 0 everywhere. Channel ``c > 0`` scores ``fill[c]`` (< 0) outside
its box and ``boxes[c]`` inside. The label channel is the argmax over channels of the scores
divided by the channel's ``scale`` (> 0): a pixel is in an object where its score is positive,
and where several are, the one deepest relative to its size wins. A ``nested`` channel (a
lesion that its organ's shape counts as inside the organ) wins wherever it is positive. A
channel with no box never wins (its fill is negative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

Box = tuple[slice, slice]


@dataclass
class BoxScores:
    """Scores of one slice (see the module doc): ``shape`` (H, W); ``fill`` (L,) float32 with
    ``fill[0] == 0``; ``boxes`` channel -> (box, (h, w) float32 array); ``scale`` (L,) float32
    > 0, each channel's size for the argmax (None: all 1); ``nested`` the channels that win
    wherever positive."""

    shape: tuple[int, int]
    fill: np.ndarray
    boxes: dict[int, tuple[Box, np.ndarray]] = field(default_factory=dict)
    scale: np.ndarray | None = None
    nested: frozenset[int] = frozenset()

    @property
    def channels(self) -> int:
        return len(self.fill)

    def argmax(self) -> np.ndarray:
        """(H, W) int64 label channel of the scaled scores (module doc); ties go to the lower
        channel (as ``argmax``)."""
        return self.top()[0]

    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`argmax` and the winning scaled score (H, W) float32 (0 on background)."""
        best = np.zeros(self.shape, np.float32)
        label = np.zeros(self.shape, np.int64)
        for channel in sorted(self.boxes, key=lambda c: (c in self.nested, c)):
            box, values = self.boxes[channel]
            if self.scale is not None:
                values = values / self.scale[channel]
            wins = values > (0 if channel in self.nested else best[box])
            best[box][wins] = values[wins]
            label[box][wins] = channel
        return label, best

    def drop(self, c: int, fill: float) -> None:
        """Take channel ``c`` off the slice: no box, ``fill`` (< 0) everywhere."""
        self.boxes.pop(c, None)
        self.fill[c] = fill

    def channel(self, c: int, box: Box | None = None) -> np.ndarray:
        """Channel ``c`` inside ``box`` (default: the whole slice) as a dense array."""
        box = box or (slice(0, self.shape[0]), slice(0, self.shape[1]))
        rows, cols = box
        out = np.full((rows.stop - rows.start, cols.stop - cols.start), self.fill[c],
                      np.float32)
        if c in self.boxes:
            (own_rows, own_cols), values = self.boxes[c]
            top, bottom = max(rows.start, own_rows.start), min(rows.stop, own_rows.stop)
            left, right = max(cols.start, own_cols.start), min(cols.stop, own_cols.stop)
            if top < bottom and left < right:
                out[top - rows.start:bottom - rows.start, left - cols.start:right - cols.start] \
                    = values[top - own_rows.start:bottom - own_rows.start,
                             left - own_cols.start:right - own_cols.start]
        return out

    def blend(self, other: BoxScores, weight: float | np.ndarray) -> BoxScores:
        """``weight * self + (1 - weight) * other`` per channel; ``weight`` a number or an
        (H, W) map. Each result box is the bounding box of the two inputs' boxes."""
        if other.shape != self.shape or other.channels != self.channels:
            raise ValueError(f"cannot blend scores {self.shape}x{self.channels} with "
                             f"{other.shape}x{other.channels}")
        dense_weight = isinstance(weight, np.ndarray)
        boxes: dict[int, tuple[Box, np.ndarray]] = {}
        for c in set(self.boxes) | set(other.boxes):
            box = _union(*(scores.boxes[c][0] for scores in (self, other) if c in scores.boxes))
            w = weight[box] if dense_weight else weight
            boxes[c] = box, w * self.channel(c, box) + (1 - w) * other.channel(c, box)
        if dense_weight:
            # outside every box the blend of two fills stays within [min, max] of them: < 0
            fill = np.minimum(self.fill, other.fill)
        else:
            fill = weight * self.fill + (1 - weight) * other.fill
        fill[0] = 0.0
        return BoxScores(self.shape, fill.astype(np.float32), boxes, self.scale, self.nested)

    def dense(self) -> torch.Tensor:
        """(L, H, W) float32 tensor."""
        return torch.from_numpy(np.stack([self.channel(c) for c in range(self.channels)]))


def _union(*boxes: Box) -> Box:
    rows = slice(min(b[0].start for b in boxes), max(b[0].stop for b in boxes))
    cols = slice(min(b[1].start for b in boxes), max(b[1].stop for b in boxes))
    return rows, cols
