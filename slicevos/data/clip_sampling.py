"""Deterministic clip sampling: which case, which slices (first slice, gaps, direction) and
which objects a training clip of the propagation module holds.

Clip ``i`` of step ``step`` on rank ``rank`` is a pure function of ``(seed, rank, step, i)``
and the cache content (``SliceStream`` draws the first slice, then ``default_rng`` of the key's
seed draws the rest), so a resumed run or a data-loader worker draws exactly the same clips.

The first slice ``z0`` (the frame whose masks the network is given) is drawn uniformly among
the slices that hold an object of at least ``min_object_pixels`` pixels and leave room for the
clip in at least one direction. The clip runs up (``z`` increasing) or, with
``reverse_probability``, down; when only one direction has room it takes that one. Each of
the ``length - 1`` gaps is drawn uniformly in ``[min_gap, max_gap]``, with ``max_gap`` lowered
to what the room in the chosen direction allows (so near the ends of a volume gaps are shorter).
Objects: 1..``max_objects`` label ids of frame 0 with at least ``min_object_pixels`` pixels,
uniformly, without replacement. Any label id > 0 is an object (no schema involved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slicevos.data.sampling import SEED_BOUND, SliceStream

CLIP_STREAM, VAL_CLIP_STREAM = 3, 4  # after sampling.py's labeled / unlabeled / split streams


@dataclass(frozen=True)
class ClipKey:
    """One training clip: the slices ``frames`` of ``case_id`` in clip order (frame 0 first),
    the label ids of its objects, and the seed of its augmentation and crop."""

    case_id: str
    frames: tuple[int, ...]
    object_ids: tuple[int, ...]
    seed: int


def curriculum_max_gap(step: int, start: int, end: int, iterations: int) -> int:
    """Largest gap allowed at ``step``: ``start`` at step 0, growing linearly to ``end`` at
    ``iterations`` (rounded to the nearest integer), ``end`` after."""
    if iterations <= 0 or step >= iterations:
        return end
    return int(round(start + (end - start) * step / iterations))


def eligible_first_slices(areas: np.ndarray, length: int, min_gap: int,
                          min_object_pixels: int) -> np.ndarray:
    """bool (D,): slices that may start a clip. ``areas`` (D, K): pixels of label id k on
    slice z (column 0 = background, ignored)."""
    depth = areas.shape[0]
    need = (length - 1) * min_gap
    z = np.arange(depth)
    has_object = (np.asarray(areas)[:, 1:] >= max(1, min_object_pixels)).any(1)
    return has_object & ((z >= need) | (z <= depth - 1 - need))


def draw_frames(rng: np.random.Generator, z0: int, depth: int, length: int, min_gap: int,
                max_gap: int, reverse_probability: float) -> tuple[int, ...]:
    """Slice indices of a clip starting at ``z0`` (see the module doc). ``z0`` must leave room
    for ``length`` frames ``min_gap`` apart in at least one direction."""
    need = (length - 1) * min_gap
    room = {False: depth - 1 - z0, True: z0}  # reverse -> slices available in that direction
    reverse = bool(rng.random() < reverse_probability)
    if room[reverse] < need:
        reverse = not reverse
    if room[reverse] < need:
        raise ValueError(f"slice {z0} of a {depth}-slice volume has no room for {length} "
                         f"frames {min_gap} apart")
    high = max(min_gap, min(max_gap, room[reverse] // (length - 1)))
    gaps = rng.integers(min_gap, high + 1, size=length - 1)
    offsets = np.concatenate([[0], np.cumsum(gaps)])
    return tuple(int(z) for z in (z0 - offsets if reverse else z0 + offsets))


def draw_objects(rng: np.random.Generator, areas_row: np.ndarray, max_objects: int,
                 min_object_pixels: int) -> tuple[int, ...]:
    """1..``max_objects`` distinct label ids (> 0) whose area in ``areas_row`` (K,) is at least
    ``min_object_pixels``, in random order."""
    eligible = np.flatnonzero(np.asarray(areas_row)[1:] >= max(1, min_object_pixels)) + 1
    if eligible.size == 0:
        raise ValueError("no object large enough on this slice")
    count = int(rng.integers(1, min(max_objects, eligible.size) + 1))
    return tuple(int(k) for k in rng.choice(eligible, count, replace=False))


class ClipSampler:
    """Draws ``ClipKey``s from ``cases``. ``areas`` holds each case's (D, K) label areas;
    ``max_gap(step)`` the curriculum (a callable, so validation can fix it);
    ``case_factors`` (one per case, default 1) scale how often each case's slices start a
    clip."""

    def __init__(self, stream_id: int, cases: Sequence[str], areas: Sequence[np.ndarray],
                 length: int, min_gap: int, max_objects: int, min_object_pixels: int,
                 reverse_probability: float, max_gap,
                 case_factors: Sequence[float] | None = None) -> None:
        self.areas = dict(zip(cases, areas, strict=True))
        self.length, self.min_gap, self.max_objects = length, min_gap, max_objects
        self.min_object_pixels, self.reverse_probability = min_object_pixels, reverse_probability
        self.max_gap = max_gap
        weights = [eligible_first_slices(a, length, min_gap, min_object_pixels).astype(float)
                   for a in areas]
        self.num_first_slices = int(sum(w.sum() for w in weights))
        if case_factors is not None:
            weights = [w * f for w, f in zip(weights, case_factors, strict=True)]
        self.stream = SliceStream(stream_id, cases, [a.shape[0] for a in areas], True, weights)

    def key(self, seed: int, rank: int, step: int, i: int) -> ClipKey:
        first = self.stream.key(seed, rank, step, i)
        areas = self.areas[first.case_id]
        rng = np.random.default_rng(first.seed)
        frames = draw_frames(rng, first.z, areas.shape[0], self.length, self.min_gap,
                             self.max_gap(step), self.reverse_probability)
        objects = draw_objects(rng, areas[first.z], self.max_objects, self.min_object_pixels)
        return ClipKey(first.case_id, frames, objects, int(rng.integers(SEED_BOUND)))
