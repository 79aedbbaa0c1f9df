"""Key-slice selection: segment uniformly sampled slices, keep for each organ the sampled slice
where it is largest (the paper's rule); the key slices are the union over organs (k <= number of
organs found).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from slicevos.preprocessing.position import relative_position


class SliceSegmenter(Protocol):
    def segment(self, images: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) slices + relative positions (N,) -> uint8 (N, H, W) labels."""


def sample_slices(depth: int, stride: int) -> np.ndarray:
    """Uniformly spaced slice indices, about one every ``stride`` slices, centred in the volume.

    ``ceil(depth / stride)`` samples at the centres of equal-length bins, so a volume shorter
    than the stride gets its middle slice and every slice is at most ``stride/2`` (rounded up)
    from a sample.
    """
    if depth < 1:
        raise ValueError(f"volume has no slices (depth {depth})")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    count = math.ceil(depth / stride)
    centres = (np.arange(count) + 0.5) * depth / count - 0.5
    return np.unique(np.clip(np.rint(centres), 0, depth - 1).astype(np.int64))


@dataclass
class KeySlices:
    """Result of key-slice selection.

    ``indices``: sorted key slice indices; ``masks``: uint8 (k, H, W) predicted labels on them;
    ``organ_slice``: class id -> key slice where that organ is largest (organs never found are
    absent); ``sampled``: the segmented slice indices; ``areas``: (len(sampled), K) pixel counts
    per class on each sampled slice; ``sampled_masks``: uint8 (len(sampled), H, W) the labels
    predicted on every sampled slice.
    """

    indices: np.ndarray
    masks: np.ndarray
    organ_slice: dict[int, int]
    sampled: np.ndarray
    areas: np.ndarray
    sampled_masks: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return len(self.indices) == 0


def choose_keys(areas: np.ndarray, sampled: np.ndarray, class_ids: list[int] | tuple[int, ...],
                min_area: int = 1) -> dict[int, int]:
    """For each class: the sampled slice with the largest area (ties -> the more central sample,
    then the lower index), if that area is at least ``min_area`` pixels."""
    centre = (sampled.min() + sampled.max()) / 2 if len(sampled) else 0.0
    order = np.lexsort((sampled, np.abs(sampled - centre)))  # central first, then lower z
    chosen = {}
    for class_id in class_ids:
        column = areas[order, class_id]
        best = int(np.argmax(column))  # first max in central-first order
        if column[best] >= min_area:
            chosen[int(class_id)] = int(sampled[order[best]])
    return chosen


def select_key_slices(image: np.ndarray, segmenter: SliceSegmenter, num_classes: int,
                      stride: int = 8, class_ids: list[int] | None = None,
                      min_area: int = 1, z_offset: int = 0,
                      full_depth: int | None = None) -> KeySlices:
    """Pick key slices of one volume.

    ``image``: windowed uint8 (D, C, H, W). Samples every ``stride``-th slice
    (:func:`sample_slices`), segments them in batches, and keeps per class the largest
    occurrence. ``class_ids`` defaults to all foreground classes ``1..num_classes-1``.
    When ``image`` is the part ``z_offset .. z_offset + D`` of a volume of ``full_depth``
    slices (a localizer's range), the slice positions given to the segmenter are those of the
    full volume; the returned indices are relative to ``image``.
    """
    if image.ndim != 4:
        raise ValueError(f"expected a windowed (D, C, H, W) volume, got shape {image.shape}")
    depth = image.shape[0]
    sampled = sample_slices(depth, stride)
    positions = relative_position(sampled + z_offset, full_depth or depth)
    labels = segmenter.segment(image[sampled], positions)
    areas = np.stack([np.bincount(lab.ravel(), minlength=num_classes)[:num_classes]
                      for lab in labels])
    classes = list(range(1, num_classes)) if class_ids is None else list(class_ids)
    organ_slice = choose_keys(areas, sampled, classes, min_area)
    keys = np.array(sorted(set(organ_slice.values())), dtype=np.int64)
    rows = np.searchsorted(sampled, keys)
    masks = labels[rows] if len(keys) else np.zeros((0, *image.shape[-2:]), np.uint8)
    return KeySlices(indices=keys, masks=masks, organ_slice=organ_slice, sampled=sampled,
                     areas=areas, sampled_masks=labels)
