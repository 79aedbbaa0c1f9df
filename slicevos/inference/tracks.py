"""Tracks of a propagation session: objects that share one set of key slices, propagated by
one engine, and what each object's propagation left on each slice.

A *track* is a set of objects with one key set (the session's whole-slice keys plus the
per-organ keys its objects share). Its engine sees a :class:`TrackView`: the session as if
those were the only objects and keys (key masks restricted to the track's objects). A track
runs the session's two-direction passes over the segments between its keys and hands each
finished slice to :class:`ObjectOutputs` as per-object crops: where the object won the
track's argmax, with the winning score times the track's :meth:`Track.claim_weight` there
(its *strength*). The session merges the crops of every object into the labels: on each
pixel the strongest claim wins, and a key's own pixels always do (:data:`KEY_STRENGTH`).
With one track (whole-slice keys only) that is exactly the track's argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from slicevos.inference.box_scores import intersection, placed, union, within
from slicevos.inference.fusion import (
    PassOutput,
    Scores,
    from_cpu_half,
    fuse_directions,
    score_top,
    to_cpu_half,
)

if TYPE_CHECKING:
    from slicevos.inference.session import PassEngine, PropagationSession

KEY_STRENGTH = 1e4  # a key's pixels beat any propagated score
Box = tuple[slice, slice]


class TrackView:
    """What a track's engine sees of the session: ``image``, ``depth``, ``height``,
    ``width``, ``stats``, ``key_masks`` (the track's keys, restricted to its objects) and
    ``object_ids`` (its objects present on any of those keys). ``shared``: a cache common to
    every track of the session (flows, features), see :meth:`shared_value`."""

    def __init__(self, session: PropagationSession, objects: frozenset[int]) -> None:
        self.session = session
        self.objects = objects
        self.image = session.image
        self.depth, self.height, self.width = session.depth, session.height, session.width
        self.stats = session.stats
        self.key_masks: dict[int, np.ndarray] = {}
        self.object_ids: list[int] = []

    def shared_value(self, key: Any, factory: Callable[[], Any]) -> Any:
        """The session-wide value under ``key``, made by ``factory`` the first time."""
        shared = self.session.shared
        if key not in shared:
            shared[key] = factory()
        return shared[key]

    def refresh(self) -> None:
        """Re-read this track's key masks and objects from the session."""
        self.key_masks = {z: self.session.track_key_mask(z, self.objects)
                          for z in self.session.object_key_slices(next(iter(self.objects)))}
        present: set[int] = set()
        for labels in self.key_masks.values():
            present.update(int(v) for v in np.unique(labels) if v)
        self.object_ids = sorted(present & self.objects)


class ObjectOutputs:
    """Per object and slice: the crop where it won (box, strength float32) and its doubt
    (sum of per-pixel doubt, pixel count) for the per-organ uncertainty; and per slice the
    box that crops put since the last :meth:`merge` changed."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.crops: dict[int, dict[int, tuple[Box, np.ndarray]]] = {}
        self.doubt: dict[int, np.ndarray] = {}
        self.pixels: dict[int, np.ndarray] = {}
        self.won: dict[int, np.ndarray] = {}
        self.changed: dict[int, Box] = {}

    def ensure(self, object_id: int) -> None:
        if object_id not in self.crops:
            self.crops[object_id] = {}
            self.doubt[object_id] = np.full(self.depth, np.nan, np.float32)
            self.pixels[object_id] = np.zeros(self.depth, np.int64)
            self.won[object_id] = np.zeros(self.depth, np.int64)

    def put(self, object_id: int, z: int, mask: np.ndarray, strength: np.ndarray | float,
            doubt: float = 0.0, pixels: int | None = None, box: Box | None = None) -> None:
        """Object ``object_id`` won ``mask`` bool of slice ``z`` with ``strength`` (an array
        like the mask, or a number); both cover ``box`` of the slice (None: all of it);
        ``doubt`` out of ``pixels`` (default: the mask's size) is what its per-slice
        uncertainty reads."""
        self.ensure(object_id)
        count = int(np.count_nonzero(mask))
        self.won[object_id][z] = count
        self.pixels[object_id][z] = count if pixels is None else pixels
        self.doubt[object_id][z] = doubt
        old = self.crops[object_id].pop(z, None)
        if old is not None:
            self._changed(z, old[0])
        if not count:
            return
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        found = (slice(y, y + h), slice(x, x + w))
        values = np.where(mask[found], strength[found] if isinstance(strength, np.ndarray)
                          else strength, 0).astype(np.float32, copy=False)
        self.crops[object_id][z] = placed(found, box), values
        self._changed(z, self.crops[object_id][z][0])

    def _changed(self, z: int, box: Box) -> None:
        self.changed[z] = union(self.changed[z], box) if z in self.changed else box

    def area(self, object_id: int) -> np.ndarray:
        """(D,) int64: pixels the object won on each slice of its track (keys: the key's;
        before the merge with other tracks)."""
        return self.won[object_id] if object_id in self.won else np.zeros(self.depth, np.int64)

    def merge(self, z: int, labels: np.ndarray) -> None:
        """Bring ``labels`` (H, W) uint8 of slice ``z``, as the last merge left them, up to
        date with the crops: per pixel the strongest object (ties: the lower id),
        background where none claims it; only inside the box the crops put since then
        changed (elsewhere every pixel has the same claims as before)."""
        frame = self.changed.pop(z, None)
        if frame is None:
            return
        framed = labels[frame]
        framed[:] = 0
        best = np.zeros(framed.shape, np.float32)
        for object_id in sorted(self.crops):
            crop = self.crops[object_id].get(z)
            common = None if crop is None else intersection(crop[0], frame)
            if common is None:
                continue
            values = crop[1][within(common, crop[0])]
            here = within(common, frame)
            wins = values > best[here]
            np.copyto(best[here], values, where=wins)
            np.copyto(framed[here], object_id, where=wins)

    def uncertainty(self, objects: Iterable[int]) -> np.ndarray:
        """(D,) float32: summed doubt over summed pixels of ``objects``; NaN where any of them
        is not done, 0 where none has pixels."""
        objects = [o for o in objects if o in self.doubt]
        if not objects:
            return np.zeros(self.depth, np.float32)
        doubt = np.sum([self.doubt[o] for o in objects], axis=0)
        pixels = np.sum([self.pixels[o] for o in objects], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pixels > 0, doubt / np.maximum(pixels, 1), np.where(
                np.isnan(doubt), np.nan, 0.0)).astype(np.float32)


class SegmentResult:
    """One finished slice of a track over ``box`` of it (background outside; an empty box
    for an empty slice): label values uint8, winning strength float32 (both covering the
    box), and per label value the doubt and the pixels it is out of."""

    def __init__(self, labels: np.ndarray, strength: np.ndarray | float,
                 doubt: np.ndarray, pixels: np.ndarray, box: Box) -> None:
        self.labels, self.strength, self.doubt, self.pixels = labels, strength, doubt, pixels
        self.box = box

    @classmethod
    def empty(cls) -> SegmentResult:
        return cls(np.zeros((0, 0), np.uint8), 0.0, np.zeros(256), np.zeros(256, np.int64),
                   (slice(0, 0), slice(0, 0)))

    @classmethod
    def from_channels(cls, lut: np.ndarray, channels: np.ndarray, strength: np.ndarray,
                      box: Box, doubt_map: np.ndarray | None = None,
                      pair: tuple[np.ndarray, np.ndarray] | None = None) -> SegmentResult:
        """``channels``, ``strength``, ``doubt_map`` and ``pair`` cover ``box`` of the slice.
        ``pair``: the two directions' channels (doubt: the pixels either calls the object
        on which they differ, out of the pixels either calls it); else ``doubt_map``
        summed over the object's pixels."""
        length = len(lut)
        found = _nonzero_box(channels, *(pair or ()))
        if found is None:
            return cls.empty()
        if pair is not None:
            # confusion counts of (forward channel, backward channel) in one pass
            forward, backward = (c[found].ravel() for c in pair)
            confusion = np.bincount(forward * length + backward, minlength=length * length
                                    ).reshape(length, length)
            same = np.diag(confusion)
            either = confusion.sum(1) + confusion.sum(0)
            pixels = either - same
            doubt = (either - 2 * same).astype(np.float64)
        else:
            flat = channels[found].ravel()
            pixels = np.bincount(flat, minlength=length)
            doubt = (np.zeros(length) if doubt_map is None else np.bincount(
                flat, weights=doubt_map[found].ravel(), minlength=length))
        by_label_doubt, by_label_pixels = np.zeros(256), np.zeros(256, np.int64)
        np.add.at(by_label_doubt, lut, doubt[:length])
        np.add.at(by_label_pixels, lut, pixels[:length])
        return cls(lut[channels[found]], strength[found], by_label_doubt, by_label_pixels,
                   placed(found, box))

    def store(self, outputs: ObjectOutputs, objects: Iterable[int], z: int) -> None:
        for object_id in objects:
            mask = (self.labels == object_id) if self.pixels[object_id] else np.zeros(
                self.labels.shape, bool)
            outputs.put(object_id, z, mask, self.strength, float(self.doubt[object_id]),
                        int(self.pixels[object_id]), self.box)


def _extent(scores: Scores) -> Box | None:
    """Where the scores can label anything: the boxes of BoxScores (None: none), all of a
    dense tensor."""
    if isinstance(scores, torch.Tensor):
        return slice(0, scores.shape[-2]), slice(0, scores.shape[-1])
    return scores.extent()


def _nonzero_box(*channel_maps: np.ndarray) -> Box | None:
    """The bounding box of the pixels any of the (H, W) maps has nonzero; None if none."""
    nonzero = channel_maps[0] != 0
    for other in channel_maps[1:]:
        nonzero |= other != 0
    if not nonzero.any():
        return None
    x, y, w, h = cv2.boundingRect(nonzero.view(np.uint8))
    return slice(y, y + h), slice(x, x + w)


class Track:
    """Objects with one key set, their engine and which of their slices are up to date."""

    def __init__(self, session: PropagationSession, objects: frozenset[int],
                 engine_factory: Callable[[Any], PassEngine],
                 up_to_date: np.ndarray | None = None) -> None:
        self.session = session
        self.objects = objects
        self.view = TrackView(session, objects)
        self.view.refresh()
        self.engine = engine_factory(self.view)
        self.up_to_date = (np.zeros(session.depth, bool) if up_to_date is None
                           else up_to_date.copy())

    @property
    def key_slices(self) -> list[int]:
        return sorted(self.view.key_masks)

    def key_changed(self, z: int) -> None:
        """Key ``z`` of this track was set, replaced or removed: re-read the keys, tell the
        engine, and mark the slices between ``z``'s neighbouring keys out of date, and those
        beyond the outermost key of a side where its pass reads ``z`` (the engine's reach)."""
        before = list(self.view.object_ids)
        self.view.refresh()
        reach_low, reach_high = self.engine.keys_changed(z, self.view.object_ids != before)
        keys = self.key_slices
        below = [k for k in keys if k < z]
        above = [k for k in keys if k > z]
        low, high = (max(below) + 1 if below else 0), (min(above) if above else self.depth)
        self.up_to_date[low:high] = False
        if keys:
            # z among the outermost keys that a side's pass reads (counted on the keys after
            # the change: a change beyond them leaves them as they were, and so their count)
            if len(below) < reach_low:
                self.up_to_date[:keys[0]] = False
            if len(above) < reach_high:
                self.up_to_date[keys[-1] + 1:] = False
        if z in self.view.key_masks:
            self.up_to_date[z] = True

    def claim_weight(self, z: int) -> float:
        """What this track's claims on slice ``z`` count for against other tracks' claims
        (their strength is the winning score times this): ``1 / (1 + d)``, ``d`` the slices
        from ``z`` to the track's nearest key. A key carried farther errs more: a vessel run
        on past its last key into the next one, labelled as another object and drawn a slice
        away (lidc's superior vena cava into the right brachiocephalic vein), loses there
        to that one (docs/labeling.md, "Per-organ keys: the nearer key's claim")."""
        return 1.0 / (1.0 + min((abs(z - key) for key in self.view.key_masks), default=0))

    def add_objects(self, objects: frozenset[int]) -> None:
        """Objects that join this track (they first appear on a whole-slice key); the engine
        hears of it at the next :meth:`key_changed`."""
        self.objects = self.view.objects = self.objects | objects

    @property
    def depth(self) -> int:
        return self.session.depth

    def pending(self) -> int:
        return int((~self.up_to_date).sum())

    def segments(self) -> list[tuple[int | None, int | None, int, int]]:
        """(left key, right key, low, high) of every segment with an out-of-date slice: those
        between two keys first, then those beyond the outermost keys (whose passes may take
        up the walk the inner passes made towards them: the flow engine's second opinion)."""
        keys = self.key_slices
        bounds = [None, *keys, None]
        found = []
        for left, right in zip(bounds[:-1], bounds[1:], strict=True):
            low = 0 if left is None else left + 1
            high = self.depth if right is None else right
            if low < high and not self.up_to_date[low:high].all():
                found.append((left, right, low, high))
        return sorted(found, key=lambda segment: segment[0] is None or segment[1] is None)

    def run_segment(self, left: int | None, right: int | None, low: int, high: int,
                    disagreement: np.ndarray | None = None
                    ) -> Iterator[tuple[int, SegmentResult]]:
        """Propagate slices ``low..high-1`` between keys ``left`` and ``right`` (None: no key
        on that side; the session's fusion rule) one pass after the other; ``disagreement``
        (D, H, W) bool, if given, records where the directions differ. The forward pass of
        a two-key segment waits (float16) for the backward one."""
        if not self.view.object_ids:
            for z in range(low, high):
                yield z, SegmentResult.empty()
            return
        passes = self.passes(left, right, low, high)
        if len(passes) == 1:
            for z, output in self.run_pass(*passes[0]):
                yield z, self.one_way(output)
            return
        stored = {z: to_cpu_half(output) for z, output in self.run_pass(*passes[0])}
        for z, backward in self.run_pass(*passes[1]):
            yield z, self.both_ways(z, from_cpu_half(stored.pop(z), backward), backward,
                                    left, right, disagreement)

    @staticmethod
    def passes(left: int | None, right: int | None, low: int, high: int
               ) -> list[tuple[int, int | None, range]]:
        """The passes of a segment, ``(start key, other key or None, slices in order)``: the
        forward and the backward pass between two keys; one pass beyond the outermost key."""
        if left is None or right is None:
            forward = right is None
            return [(left if forward else right, None, range(low, high)[::1 if forward else -1])]
        return [(left, right, range(low, high)), (right, left, range(high - 1, low - 1, -1))]

    def run_pass(self, start: int, other: int | None, slices: range
                 ) -> Iterator[tuple[int, PassOutput]]:
        """The engine's pass (``passes``), counted."""
        return self._counted(self.engine.run_pass(start, other, slices))

    def one_way(self, output: PassOutput) -> SegmentResult:
        """A slice beyond the outermost key from its one pass (doubt: the engine's)."""
        box = _extent(output.scores)
        if box is None:
            return SegmentResult.empty()
        channels, strength = score_top(output.scores, box)
        return SegmentResult.from_channels(
            self.engine.label_lut(self.view.object_ids), channels, strength, box,
            doubt_map=self.engine.pixel_doubt(output, box))

    def both_ways(self, z: int, forward: PassOutput, backward: PassOutput, left: int,
                  right: int, disagreement: np.ndarray | None = None) -> SegmentResult:
        """Slice ``z`` between keys ``left`` and ``right`` from its two passes (the session's
        fusion rule; doubt: where the two directions' labels differ)."""
        extents = [e for e in map(_extent, (forward.scores, backward.scores)) if e]
        if disagreement is not None:
            disagreement[z] = False
        if not extents:
            return SegmentResult.empty()
        box = union(*extents)
        pair = score_top(forward.scores, box)[0], score_top(backward.scores, box)[0]
        if disagreement is not None:
            disagreement[z][box] = pair[0] != pair[1]
        channels, strength = score_top(fuse_directions(
            forward.scores, backward.scores, z, left, right, forward.confidence_over(box),
            backward.confidence_over(box), box, box), box)
        return SegmentResult.from_channels(self.engine.label_lut(self.view.object_ids),
                                           channels, strength, box, pair=pair)

    def _counted(self, passes: Iterator[tuple[int, PassOutput]]
                 ) -> Iterator[tuple[int, PassOutput]]:
        for z, output in passes:
            self.view.stats.add("decoded_slices")
            yield z, output
