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

    def top(self, box: Box | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`argmax` and the winning scaled score float32 (0 on background), over
        ``box`` of the slice (default: all of it; outside :meth:`extent` all background)."""
        box = box or self.whole
        best = np.zeros(box_size(box), np.float32)
        label = np.zeros(box_size(box), np.int64)
        for channel in sorted(self.boxes, key=lambda c: (c in self.nested, c)):
            own, values = self.boxes[channel]
            common = intersection(box, own)
            if common is None:
                continue
            values = values[within(common, own)]
            if self.scale is not None:
                values = values / self.scale[channel]
            here = within(common, box)
            wins = values > (0 if channel in self.nested else best[here])
            np.copyto(best[here], values, where=wins)  # ~3x boolean indexing
            np.copyto(label[here], channel, where=wins)
        return label, best

    @property
    def whole(self) -> Box:
        return slice(0, self.shape[0]), slice(0, self.shape[1])

    def extent(self) -> Box | None:
        """The bounding box of every channel's box: outside it every pixel is background
        (None: no box, the whole slice is)."""
        return union(*(box for box, _ in self.boxes.values())) if self.boxes else None

    def drop(self, c: int, fill: float) -> None:
        """Take channel ``c`` off the slice: no box, ``fill`` (< 0) everywhere."""
        self.boxes.pop(c, None)
        self.fill[c] = fill

    def channel(self, c: int, box: Box | None = None) -> np.ndarray:
        """Channel ``c`` inside ``box`` (default: the whole slice) as a dense array."""
        box = box or self.whole
        if c not in self.boxes:
            return np.full(box_size(box), self.fill[c], np.float32)
        own, values = self.boxes[c]
        return over(values, own, box, float(self.fill[c]))

    def blend(self, other: BoxScores, weight: float | np.ndarray,
              weight_box: Box | None = None) -> BoxScores:
        """``weight * self + (1 - weight) * other`` per channel; ``weight`` a number or a map
        over ``weight_box`` of the slice (default: all of it), which must hold every box of
        both. Each result box is the bounding box of the two inputs' boxes."""
        if other.shape != self.shape or other.channels != self.channels:
            raise ValueError(f"cannot blend scores {self.shape}x{self.channels} with "
                             f"{other.shape}x{other.channels}")
        dense_weight = isinstance(weight, np.ndarray)
        weight_box = weight_box or self.whole
        boxes: dict[int, tuple[Box, np.ndarray]] = {}
        for c in set(self.boxes) | set(other.boxes):
            box = union(*(scores.boxes[c][0] for scores in (self, other) if c in scores.boxes))
            w = weight[within(box, weight_box)] if dense_weight else weight
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


def union(*boxes: Box) -> Box:
    """The bounding box of ``boxes`` (at least one)."""
    rows = slice(min(b[0].start for b in boxes), max(b[0].stop for b in boxes))
    cols = slice(min(b[1].start for b in boxes), max(b[1].stop for b in boxes))
    return rows, cols


def box_size(box: Box) -> tuple[int, int]:
    return box[0].stop - box[0].start, box[1].stop - box[1].start


def intersection(a: Box, b: Box) -> Box | None:
    """The pixels of both boxes (None: they do not meet)."""
    rows = slice(max(a[0].start, b[0].start), min(a[0].stop, b[0].stop))
    cols = slice(max(a[1].start, b[1].start), min(a[1].stop, b[1].stop))
    return (rows, cols) if rows.start < rows.stop and cols.start < cols.stop else None


def within(box: Box, outer: Box) -> Box:
    """``box`` in the coordinates of an array covering ``outer`` of the slice."""
    top, left = outer[0].start, outer[1].start
    return (slice(box[0].start - top, box[0].stop - top),
            slice(box[1].start - left, box[1].stop - left))


def placed(box: Box, outer: Box | None) -> Box:
    """``box``, given in the coordinates of an array covering ``outer`` of the slice (None:
    all of it), in slice coordinates (the inverse of :func:`within`)."""
    if outer is None:
        return box
    top, left = outer[0].start, outer[1].start
    return (slice(box[0].start + top, box[0].stop + top),
            slice(box[1].start + left, box[1].stop + left))


def over(values: np.ndarray, values_box: Box | None, box: Box, fill: float) -> np.ndarray:
    """``values`` (covering ``values_box`` of a slice; None: all of it) read over ``box`` of
    the slice, ``fill`` where they do not reach (a view where ``box`` lies inside)."""
    if values_box is None:
        return values[box]
    common = intersection(box, values_box)
    if common == box:
        return values[within(box, values_box)]
    out = np.full(box_size(box), fill, values.dtype)
    if common is not None:
        out[within(common, box)] = values[within(common, values_box)]
    return out
