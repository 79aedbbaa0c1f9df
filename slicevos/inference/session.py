"""The propagation session: key slices, segments, two-direction fusion, uncertainty and
re-propagation, shared by every propagation engine (STCN, optical flow, both fused).

::

    session = propagator.start(image)          # windowed uint8 volume (D, C, H, W)
    session.add_mask(40, labels_40)            # (H, W) uint8; label values = object ids
    session.add_mask(90, labels_90)            # any number of key slices
    for z, labels_z in session.propagate():    # slices as they finish (progress bars)
        ...
    labels = session.run()                     # or everything at once: (D, H, W) uint8

Objects are the label values seen on any key slice (a stable sorted list); an object absent
on a key slice is background there. Key slices come out exactly as given. With no object on
any key slice every other slice is background. Objects with keys of their own
(:meth:`PropagationSession.add_object_mask`) are propagated in tracks of their own
(``slicevos.inference.tracks``); where two tracks claim a pixel, the claim with the higher
score times ``1 / (1 + slices to its track's nearest key)`` wins (``Track.claim_weight``).

An engine (:class:`PassEngine`) does one thing: a *pass* from one key slice through a run of
slices in one direction, yielding per-slice *scores* ``(L, H, W)`` float32 whose argmax over
the L channels, mapped through :meth:`PassEngine.label_lut`, is the label. STCN scores are
probabilities; flow scores are clipped signed distances (see ``slicevos.inference.engines.flow.engine``).
Scores of the two directions are fused linearly, so they must be on a scale where a weighted
mean is meaningful.

Fusion rule (:func:`fuse_directions`). The key slices cut the volume into segments. A slice
``z`` between two keys ``zl < z < zr`` is segmented twice: by a forward pass from ``zl`` (which
may also use key ``zr``) and a backward pass from ``zr``. The two passes' scores are averaged
with weights by distance, ``w_l = (zr - z) / (zr - zl)`` for the forward pass and ``w_r = 1 -
w_l`` for the backward one, optionally times each pass's per-pixel confidence
(:meth:`PassEngine.confidence`, e.g. flow's warp residual), and the argmax is the label.
Slices below the lowest key (above the highest) get the backward (forward) pass only.

Uncertainty (``session.slice_uncertainty``, (D,) float32, NaN until a slice is done): 0 on
key slices; between two keys the fraction of foreground pixels on which the two directions'
labels differ (:func:`channel_disagreement`; why not the warp residual too:
docs/propagation.md); beyond the outermost keys (one direction) the engine's
:meth:`PassEngine.one_direction_uncertainty`. ``keep_disagreement_map=True`` also keeps the
pixel map of direction disagreement.

Re-propagation: :meth:`PropagationSession.add_mask` on a propagated session marks the
segments next to that key dirty, and the segments beyond the outermost keys whose passes
read it (:meth:`PassEngine.keys_changed`: the flow engine's end rule reads up to the
three outermost keys of a side); the next :meth:`~PropagationSession.propagate` recomputes those
and keeps every other label. So the labels depend on the keys only, not on the order in
which they came: a fresh session given the same keys gives the same labels.

Threads: an engine whose :attr:`PassEngine.pass_threads` is over 1 (the flow engine) has
the out-of-date segments' passes run on that many threads (``slicevos.inference.parallel``):
the segments between two keys first, then those beyond the outermost keys. The labels do not
depend on it, only the order in which :meth:`PropagationSession.propagate` gives the slices.

Memory: forward-pass scores of a two-key segment wait for the backward pass on the CPU in
float16 (L x H x W x 2 bytes per slice of the segment); on threads, either pass's slices
wait for the other's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from slicevos.errors import InputError
from slicevos.inference.box_scores import Box
from slicevos.inference.fusion import (  # noqa: F401  (the session's public helpers)
    PassOutput,
    Scores,
    channel_disagreement,
    fuse_directions,
    fusion_weight,
    score_channels,
    score_top,
)
from slicevos.inference.parallel import run_segments
from slicevos.inference.tracks import (
    KEY_STRENGTH,
    ObjectOutputs,
    SegmentResult,
    Track,
    TrackView,
)


@dataclass
class SessionStats:
    """Instrumentation: slices decoded (one pass, one slice), slices key-encoded and value
    encodings (STCN), optical-flow fields computed (flow), and the largest number of non-key
    (recent) frames any STCN memory bank held. Passes on several threads count with
    :meth:`add`."""

    decoded_slices: int = 0
    key_encoded_slices: int = 0
    value_encodings: int = 0
    peak_recent_frames: int = 0
    flow_fields: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, count: int = 1) -> None:
        """Add ``count`` to the counter ``name`` (thread-safe)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + count)


class PassEngine:
    """What an engine does for a :class:`PropagationSession` (see the module doc). An engine
    instance belongs to one track of a session (``slicevos.inference.tracks.TrackView``: the
    session as that track's objects and keys see it) and reads its ``key_masks`` and
    ``object_ids``."""

    #: passes of different segments may run at once on this many threads (they change no
    #: state that another pass reads, or guard it); 1: one pass at a time
    pass_threads: int = 1

    def check_key(self, z: int, labels: np.ndarray) -> None:
        """Raise InputError for key labels this engine cannot take."""

    def keys_changed(self, z: int, objects_changed: bool) -> tuple[int, int]:
        """Key slice ``z`` was set, replaced or removed; ``objects_changed``: the object list
        changed. Returns how many of the outermost keys at the low and at the high end a pass
        beyond them reads, on the keys as they are now (0: only its own key; the flow engine's
        end rule: 2 or 3, ``FlowPasses._outer_reach``), so that a change to one of them redoes
        that pass too, as a fresh session with the same keys would do it. A change farther in
        leaves those keys, and so their count, as they were."""
        return 0, 0

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        """uint8 (L,): the label of each score channel (applied to the argmax)."""
        raise NotImplementedError

    def run_pass(self, start: int, other: int | None,
                 slices: range) -> Iterator[tuple[int, PassOutput]]:
        """One direction from key ``start`` through ``slices`` (in order); ``other`` is the
        segment's other key (None beyond the outermost key)."""
        raise NotImplementedError

    def work_ahead(self, stop: threading.Event) -> None:
        """Work ahead of the next correction while the session waits for the user (the flow
        engine: the flows no pass has computed yet); returns when done or once ``stop`` is
        set. Never called while a pass runs."""

    def pixel_doubt(self, output: PassOutput, box: Box) -> np.ndarray | None:
        """Float32 doubt in [0, 1] per pixel over ``box`` of a slice seen from one key only
        (beyond the outermost key); None: no doubt measure."""
        raise NotImplementedError


class PropagationSession:
    """Key slices, labels (D, H, W) uint8 and the tracks that propagate them; the engine of
    each track is made by ``engine_factory(track_view)``."""

    def __init__(self, image: torch.Tensor, engine_factory: Callable[[TrackView],
                 PassEngine], keep_disagreement_map: bool = False) -> None:
        self.image = image
        self.depth, _, self.height, self.width = image.shape
        self.key_masks: dict[int, np.ndarray] = {}
        self.organ_keys: dict[int, dict[int, np.ndarray]] = {}
        self.labels = np.zeros((self.depth, self.height, self.width), np.uint8)
        self.stats = SessionStats()
        self.shared: dict = {}
        self.outputs = ObjectOutputs(self.depth)
        self.tracks: list[Track] = []
        self._engine_factory = engine_factory
        self._probe: PassEngine | None = None
        self._swept = np.zeros(self.depth, bool)  # slices done while there is no object
        self._disagreement = (np.zeros((self.depth, self.height, self.width), bool)
                              if keep_disagreement_map else None)

    # -- keys ------------------------------------------------------------------------------

    @property
    def key_slices(self) -> list[int]:
        """The whole-slice key slices, sorted."""
        return sorted(self.key_masks)

    @property
    def any_key_slices(self) -> list[int]:
        """Slices with a whole-slice key or any organ's own key, sorted."""
        organ = {z for keys in self.organ_keys.values() for z in keys}
        return sorted(set(self.key_masks) | organ)

    @property
    def object_ids(self) -> list[int]:
        """Every object of the session (on any key), sorted."""
        return sorted(o for track in self.tracks for o in track.objects)

    def object_key_slices(self, object_id: int) -> list[int]:
        """The slices that are keys for ``object_id``: whole-slice keys and its own."""
        return sorted(set(self.key_masks) | set(self.organ_keys.get(object_id, {})))

    def track_key_mask(self, z: int, objects: frozenset[int]) -> np.ndarray:
        """Key labels (H, W) uint8 of slice ``z`` restricted to ``objects``."""
        if z in self.key_masks:
            labels = self.key_masks[z]
            present = {int(v) for v in np.unique(labels) if v}
            return labels if present <= objects else np.where(
                np.isin(labels, sorted(objects)), labels, 0).astype(np.uint8)
        out = np.zeros((self.height, self.width), np.uint8)
        for object_id in sorted(objects):
            mask = self.organ_keys.get(object_id, {}).get(z)
            if mask is not None:
                out[mask] = object_id
        return out

    @property
    def engine(self) -> PassEngine:
        """The engine of the first track (or of no track yet: for checks)."""
        if self.tracks:
            return self.tracks[0].engine
        if self._probe is None:
            self._probe = self._engine_factory(TrackView(self, frozenset()))
        return self._probe

    def _check_plane(self, z: int, plane: np.ndarray, what: str) -> np.ndarray:
        if not 0 <= z < self.depth:
            raise InputError(None, f"key slice {z} is outside the volume of {self.depth} "
                             f"slices", f"pass 0 <= z < {self.depth}")
        plane = np.asarray(plane)
        if plane.shape != (self.height, self.width):
            raise InputError(None, f"{what} of slice {z} has shape {plane.shape}, expected "
                             f"(H, W) = {(self.height, self.width)}", "pass one 2D slice")
        return plane

    def add_mask(self, z: int, labels: np.ndarray) -> None:
        """Make slice ``z`` a whole-slice key with ``labels`` (H, W) (label values = object
        ids, 0 = background): it vouches for every object, absent ones included, and
        replaces any per-organ key on ``z``. Marks the segments next to ``z`` (of every track
        whose objects it changes) for re-propagation."""
        labels = self._check_plane(z, labels, "key mask")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 255:
            raise InputError(None, f"key mask of slice {z} must hold integer labels 0..255, got "
                             f"{labels.dtype} in [{labels.min()}, {labels.max()}]",
                             "pass a uint8 label slice")
        self.engine.check_key(z, labels)
        labels = labels.astype(np.uint8)
        before = {id(t): t.view.key_masks.get(z) for t in self.tracks}
        for keys in self.organ_keys.values():
            keys.pop(z, None)
        self.key_masks[z] = labels
        self._swept[:] = False
        present = {int(v) for v in np.unique(labels) if v}
        new = frozenset(present - set(self.object_ids))
        if new:
            self._add_objects(new)
        for track in self.tracks:
            old = before.get(id(track))
            if old is None or not np.array_equal(old, self.track_key_mask(z, track.objects)):
                track.key_changed(z)
        for object_id in self.object_ids:
            self.outputs.put(object_id, z, labels == object_id, KEY_STRENGTH, 0.0)
        self.labels[z] = labels

    def add_object_mask(self, z: int, object_id: int, mask: np.ndarray) -> None:
        """Make slice ``z`` a key for object ``object_id`` only, with ``mask`` (H, W) bool
        (empty: the object is absent there, e.g. past its end). The other objects on ``z``
        stay propagated; on a whole-slice key the key's labels change instead."""
        mask = self._check_plane(z, mask, "organ mask").astype(bool)
        if not 1 <= int(object_id) <= 255:
            raise InputError(None, f"object id {object_id} is outside 1..255",
                             "pass the organ's label value")
        object_id = int(object_id)
        if z in self.key_masks:
            labels = self.key_masks[z].copy()
            labels[labels == object_id] = 0
            labels[mask] = object_id
            self.add_mask(z, labels)
            return
        self.engine.check_key(z, (mask * object_id).astype(np.uint8))
        self.organ_keys.setdefault(object_id, {})[z] = mask
        self._swept[:] = False
        self._own_track(object_id).key_changed(z)
        self.outputs.put(object_id, z, mask, KEY_STRENGTH, 0.0)
        self.outputs.merge(z, self.labels[z])

    def remove_key(self, z: int, object_id: int | None = None) -> None:
        """Drop the whole-slice key ``z`` (``object_id`` None, per-organ keys on it too) or
        object ``object_id``'s own key on ``z``; the slice is propagated again."""
        if object_id is None:
            self.key_masks.pop(z, None)
            for keys in self.organ_keys.values():
                keys.pop(z, None)
            touched = self.tracks
        else:
            self.organ_keys.get(object_id, {}).pop(z, None)
            touched = [t for t in self.tracks if object_id in t.objects]
        self._swept[:] = False
        for track in touched:
            track.key_changed(z)

    def keys_of_slice(self, z: int) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
        """Slice ``z``'s keys: the whole-slice labels (or None) and per-organ masks."""
        return (self.key_masks.get(z), {o: keys[z] for o, keys in self.organ_keys.items()
                                         if z in keys})

    def set_keys_of_slice(self, z: int, whole: np.ndarray | None,
                          organs: dict[int, np.ndarray]) -> None:
        """Restore slice ``z``'s keys as :meth:`keys_of_slice` gave them (undo)."""
        current_whole, current_organs = self.keys_of_slice(z)
        if whole is not None:
            self.add_mask(z, whole)
        elif current_whole is not None:
            self.remove_key(z)
        for object_id in set(current_organs) - set(organs):
            self.remove_key(z, object_id)
        for object_id, mask in organs.items():
            self.add_object_mask(z, object_id, mask)

    def _add_objects(self, objects: frozenset[int]) -> None:
        """New objects seen on a whole-slice key join the track of whole-slice keys only."""
        for track in self.tracks:
            if not any(self.organ_keys.get(o) for o in track.objects):
                track.add_objects(objects)
                return
        self.tracks.append(Track(self, objects, self._engine_factory,
                                 np.ones(self.depth, bool)))

    def _own_track(self, object_id: int) -> Track:
        """The track of ``object_id`` alone (split off its track, or new)."""
        for i, track in enumerate(self.tracks):
            if object_id not in track.objects:
                continue
            if track.objects == {object_id}:
                return track
            rest = track.objects - {object_id}
            self.tracks[i] = Track(self, rest, self._engine_factory, track.up_to_date)
            own = Track(self, frozenset({object_id}), self._engine_factory, track.up_to_date)
            self.tracks.append(own)
            return own
        own = Track(self, frozenset({object_id}), self._engine_factory,
                    np.ones(self.depth, bool))
        self.tracks.append(own)
        return own

    # -- state -----------------------------------------------------------------------------

    @property
    def up_to_date(self) -> np.ndarray:
        """(D,) bool: every track is done on the slice (key slices always are)."""
        done = (np.logical_and.reduce([t.up_to_date for t in self.tracks]) if self.tracks
                else self._swept.copy())
        done[list(self.key_masks)] = True
        return done

    def pending_slices(self) -> int:
        """Slice passes the next :meth:`propagate` makes (a slice counts once per track)."""
        if not self.tracks:
            return int((~self.up_to_date).sum())
        return sum(track.pending() for track in self.tracks)

    @property
    def slice_uncertainty(self) -> np.ndarray:
        """(D,) float32 in [0, 1]: the doubt of all objects' pixels (module doc); 0 on
        whole-slice keys, NaN where a slice is not up to date."""
        values = self.outputs.uncertainty(self.object_ids)
        values[~self.up_to_date] = np.nan
        values[list(self.key_masks)] = 0.0
        return values

    def object_uncertainty(self, object_id: int) -> np.ndarray:
        """(D,) float32: :attr:`slice_uncertainty` of one object's pixels (0 on its keys)."""
        values = self.outputs.uncertainty([object_id])
        track = next((t for t in self.tracks if object_id in t.objects), None)
        if track is not None:
            values[~track.up_to_date] = np.nan
        values[self.object_key_slices(object_id)] = 0.0
        return values

    # -- propagation -----------------------------------------------------------------------

    def run(self) -> np.ndarray:
        """Propagate everything that is out of date; returns the labels (D, H, W) uint8."""
        for _ in self.propagate():
            pass
        return self.labels

    def propagate(self) -> Iterator[tuple[int, np.ndarray]]:
        """Generator of ``(z, labels (H, W) uint8)`` for every out-of-date non-key slice as it
        finishes (once per track that had it out of date: with whole-slice keys only there is
        one track and every slice comes once); updates :attr:`labels` as it goes."""
        if not self.key_masks and not any(self.organ_keys.values()):
            raise InputError(None, "no key slice to propagate from",
                             "call session.add_mask(z, labels) at least once")
        if not self.tracks:
            for z in np.flatnonzero(~self.up_to_date).tolist():
                self.labels[z] = 0
                self._swept[z] = True
                yield z, self.labels[z].copy()
            return
        threads = min(track.engine.pass_threads for track in self.tracks)
        for jobs in self._segment_phases():
            for track, z, result in run_segments(jobs, threads, self._disagreement):
                result.strength = result.strength * track.claim_weight(z)
                result.store(self.outputs, self._stored_objects(track, result), z)
                self.outputs.merge(z, self.labels[z])
                track.up_to_date[z] = True
                yield z, self.labels[z].copy()

    def _segment_phases(self) -> list[list[tuple[Track, tuple]]]:
        """The out-of-date segments of every track: those between two keys, then those
        beyond the outermost keys (a pass there may take up the walk an inner pass made
        towards it: the flow engine's second opinion)."""
        jobs = [(track, segment) for track in self.tracks for segment in track.segments()]
        inner = [job for job in jobs if None not in job[1][:2]]
        return [inner, [job for job in jobs if None in job[1][:2]]]

    def work_ahead(self, stop: threading.Event) -> None:
        """Let every track's engine work ahead of the next correction
        (:meth:`PassEngine.work_ahead`) until done or ``stop`` is set; not while propagating."""
        for track in list(self.tracks):
            if stop.is_set():
                return
            track.engine.work_ahead(stop)

    def _stored_objects(self, track: Track, result: SegmentResult) -> set[int]:
        """The track's objects, and labels its engine made that are no object of the session
        (a joint network may label any class), new or to be cleared."""
        objects = set(track.objects)
        if len(self.tracks) == 1:
            objects.update(int(v) for v in np.flatnonzero(result.pixels) if v)
            objects.update(o for o in self.outputs.crops if o not in track.objects)
        return objects

    def direction_disagreement_map(self) -> np.ndarray:
        """uint8 (D, H, W): 255 where the forward and backward passes disagreed (slices
        between two keys), 0 elsewhere. Needs ``keep_disagreement_map=True``."""
        if self._disagreement is None:
            raise ValueError("the session keeps no disagreement map; build the propagator "
                             "with keep_disagreement_map=True")
        return self._disagreement.view(np.uint8) * np.uint8(255)
