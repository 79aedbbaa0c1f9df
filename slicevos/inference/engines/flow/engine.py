"""The optical-flow engine of the propagation session: image-guided, needs no training.

::

    propagator = FlowPropagator()                       # FlowConfig() defaults
    session = propagator.start(image)                   # windowed uint8 volume (D, C, H, W)
    session.add_mask(40, labels_40)
    labels = session.run()

A pass from key ``k`` composes the flows between adjacent slices into one map of each slice
onto ``k`` (``slicevos.inference.engines.flow.field``) and warps the key's per-object signed
distances through it once (``slicevos.inference.engines.flow.shapes``). Scores are those distances
(pixels, clipped to ``[floor, clip]``, see ``shapes``; background scores 0), so the session's distance-weighted mean
of the two directions interpolates the shapes between the keys. Per slice the cost is one
flow, one map composition, and warps of the objects' boxes and of the key image over them
only: it grows with the objects' area, not with their count times the slice.

Confidence: ``exp(-r / residual_scale)``, ``r`` the blurred absolute difference between the
slice and the key image warped onto it. It weighs the two directions per pixel in the fusion,
and beyond the outermost keys (one direction, no disagreement to measure) it makes the
per-slice uncertainty: 1 - the mean confidence over the predicted foreground. A pass measures
it over its objects' box; the fusion reads it over both passes' boxes and measures the rest
then, as if the pass had measured it over the track's whole region.

Threads (``FlowSettings.threads`` over 1): the session runs passes at once
(``slicevos.inference.parallel``), and the second opinions of a pass beyond the outermost
key walk on a thread of their own beside it where a core is left for them
(:func:`opinion_thread`; else on the pass's thread); each cache entry is filled once (a lock
each).

Shapes between keys: an object on both keys of a segment is the distance-weighted mean of
its two warped signed distances. A part of an object with no counterpart on the segment's
other key (the object is absent there, or no part of it lies within this part's radius:
one of several lesions) fades on the way, by its own size, whatever else the other key
holds. With ``t`` the fraction of the way and ``tau = 1 / (1 + absent_depth)``
(``end_profile``):

- ``erode`` (default): the other pass scores ``-min(absent_depth * r, clip)`` around it
  (``r`` the part's area-equivalent radius), so the fused shape erodes and the part ends
  about ``tau`` of the way (a large organ, whose distances are clipped at ``clip``, by
  halfway); the two directions' confidences weigh that as any other fusion;
- ``taper``: the pass that has it shrinks it about its centroid by ``(1 - t / tau) / (1 - t)``
  (what erosion does to a disc, without the clip) and the other pass abstains around it
  (scores just below 0);
- ``ellipse``: shrunk by ``sqrt(1 - (t / tau)^2)``, an ellipsoid's end.

``absent_depth`` None: no fading; the other side scores ``-clip`` (small organs vanish
within a few slices of their key). Far from every part, a key's distances are floored at
``outside_depth`` (see ``shapes``). Where objects overlap, the argmax compares depths
relative to each object's size (``box_scores``), and an object that another holds in a
hole on a key (a lesion in its organ) wins wherever it is positive, while the holder's
shape counts the hole as inside, so it closes over the lesion as the lesion ends. Why
these values: docs/propagation.md.

Organ ends (``end_rule``) beyond the outermost key, where flow alone would carry an organ on
to the volume's end:

- ``intensity`` (default): each object's grey-value model from the keys nearest that
  end, from the outermost inward until they hold ``end_model_pixels`` of its pixels, at
  most ``END_MODEL_KEYS`` (``shapes.end_models``: its histogram against a ring around it;
  a large organ's model is its grey values at that end, a key farther in leaves it alone;
  a key no nearer that end than the other end's outermost key, in the organ's other half,
  only where the nearer keys hold fewer than ``shapes.OTHER_END_BELOW`` of those pixels;
  with ``intensity_context`` a grey value never seen in the
  object, bone or a contrast-filled vessel, counts against it as often as the rest of those
  key slices show it, rather than as no evidence); in a pass beyond the outermost key an
  object ends for good where the fraction of its warped prediction whose log-likelihood
  ratio (blurred by ``intensity_sigma``, at most a third of the object's radius) is
  positive falls below ``end_support`` times that fraction on its own key for
  ``end_patience`` slices in a row (it ends on the first of them; with more than 1 a
  shorter dip, the flow drifting off a tube for a slice or two, does not end it, but an
  organ whose end flickers runs on: docs/labeling.md, measured). Beyond where the same
  rule, walking from the ``OPINIONS`` next keys inward (skipping a key next to the outermost
  one where a key lies farther in: ``OPINION_GAP``), ends it (the second opinions), it
  ends on the first slice where that fraction is below ``opinion_support`` times
  ``end_support``: a weaker drop suffices there, but the walk alone, whose shape was
  composed over more slices and may have drifted off the organ, does not end it.
  Until it ends, the pass cuts out of each object what the flow carried it onto by mistake
  (``outer_trim``, ``ends.trim``): the pixels whose blurred log-likelihood ratio is not
  positive and where the key image, warped there, does not match the slice (the warp
  residual's confidence below ``trim_confidence``), opened by ``outer_trim`` px (a liver
  past its dome laid over the heart; measured in docs/labeling.md). The end rule's support
  reads the warp before the cut. Where the rule (or a second opinion) ends an object whose
  area on the pass's last slices (up to 3) shrank by ``tip_shrink`` px of radius per slice
  or more, it is tapering: it goes on for up to ``tip_slices`` slices, its warp cut to the
  area that rate leaves (``ends.level_cut``: its shape eroded along its own distances),
  until that reaches 0 (on 3 mm slices a kidney's last slices, mixed with fat, look unlike
  it: docs/labeling.md, "Organ tips");
- ``none``: plain warping.

What a pass reads, so that a correction redoes only what a fresh session with the same keys
would compute differently (labels depend on the keys, not on their order): a pass between
two keys reads those two keys; a pass beyond the outermost key reads its key, the keys up to
the one whose walk gives its second opinion (the next one inward, or the one after where the
next is adjacent; while no key lies at least ``OPINION_GAP`` slices in, every key, since a
new one there would give it) and the keys its objects' end models pool, and it is redone
whatever key changed where that moves the halfway point to the other end so that the
models pool other keys (:meth:`FlowPasses.keys_changed` says so to the session).
Both compose their maps over the track's region (every key's objects, grown by 64 px),
which a key elsewhere can widen; that moves nothing but the region's edges.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import cv2
import numpy as np
import torch

from slicevos.config import check_fields
from slicevos.errors import InputError
from slicevos.inference.box_scores import Box, BoxScores, intersection, union, within
from slicevos.inference.engines.flow.ends import (
    EndWatch,
    level_cut,
    looks_like,
    release,
    support,
    tip_slope,
    trim,
)
from slicevos.inference.engines.flow.field import (
    FlowFields,
    FlowSettings,
    RegionMap,
    SliceFlow,
    block_mean,
    flow_image,
    identity_map,
    node_flow_settings,
    node_grid,
)
from slicevos.inference.engines.flow.shapes import (
    ObjectShape,
    end_models,
    key_shapes,
    label_values,
    model_depths,
    scaled_lookup,
    unmatched_parts,
)
from slicevos.inference.parallel import SendAhead, SendInline
from slicevos.inference.session import PassEngine, PassOutput, PropagationSession
from slicevos.inference.tracks import TrackView
from slicevos.preprocessing.windowing import Window, resolve_windows

END_RULES = ("none", "intensity")
END_PROFILES = ("erode", "taper", "ellipse")
ABSTAIN = -1e-3  # the score of an object a pass leaves to the other direction (just below 0)
# beyond the outermost key: the keys nearest the end whose grey values make the end rule's
# model (that key and the next ones inward), and the keys inward of it whose end-rule walks
# cap the pass (the second opinions); docs/labeling.md, "Labels follow the keys"
END_MODEL_KEYS = 3
OPINIONS = 1
# a second opinion comes from a key at least this many slices inward of the pass's key where
# there is one: a key next to it walks no slice of its own before the pass does, so its walk
# is the pass's own shape again, not a second look (docs/labeling.md, "Keys that make it worse")
OPINION_GAP = 2


@dataclass(frozen=True)
class FlowConfig:
    """The flow engine's options (see the module doc); ``flow`` says how flows are computed.
    ``windows``: the CT windows of the image it is given (the first one, abdomen, is what the
    intensity model reads); ``residual_scale`` in grey levels; ``clip`` in pixels;
    ``map_step``: every how many pixels composed maps are kept (:func:`map_step`; None: chosen
    from the flow's detail)."""

    flow: FlowSettings = field(default_factory=FlowSettings)
    windows: tuple[str, ...] = ("abdomen", "chest", "spine")
    clip: float = 24.0
    residual_scale: float = 24.0
    residual_sigma: float = 2.0
    use_confidence: bool = True
    end_rule: str = "intensity"
    intensity_sigma: float = 2.0
    intensity_context: bool = True
    end_support: float = 0.3
    end_patience: int = 1
    absent_depth: float | None = 0.3
    end_profile: str = "erode"
    outside_depth: float | None = 0.3
    flow_cache_mb: float = 0.0
    map_step: int | None = None
    opinion_support: float = 2.0
    end_model_pixels: int = 256
    outer_trim: int | None = 1
    trim_confidence: float = 0.3
    tip_slices: int | None = 3
    tip_shrink: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "clip": (self.clip > 0, "a number of pixels > 0"),
            "residual_scale": (self.residual_scale > 0, "a number > 0"),
            "residual_sigma": (self.residual_sigma >= 0, "a number >= 0"),
            "end_rule": (self.end_rule in END_RULES, f"one of {END_RULES}"),
            "intensity_sigma": (self.intensity_sigma >= 0, "a number >= 0"),
            "intensity_context": (isinstance(self.intensity_context, bool), "true or false"),
            "end_support": (0 <= self.end_support < 1, "a fraction in [0, 1)"),
            "end_patience": (isinstance(self.end_patience, int) and self.end_patience >= 1,
                             "a number of slices >= 1"),
            "absent_depth": (self.absent_depth is None or self.absent_depth > 0,
                             "null or a number > 0"),
            "end_profile": (self.end_profile in END_PROFILES, f"one of {END_PROFILES}"),
            "outside_depth": (self.outside_depth is None or self.outside_depth > 0,
                              "null or a number > 0"),
            "flow_cache_mb": (self.flow_cache_mb >= 0, "a number of MB >= 0"),
            "opinion_support": (self.opinion_support >= 1, "a number >= 1"),
            "end_model_pixels": (isinstance(self.end_model_pixels, int)
                                 and self.end_model_pixels >= 0, "a number of pixels >= 0"),
            "outer_trim": (self.outer_trim is None or (isinstance(self.outer_trim, int)
                                                       and self.outer_trim >= 0),
                           "null or a number of pixels >= 0"),
            "trim_confidence": (0 < self.trim_confidence <= 1, "a number in (0, 1]"),
            "tip_slices": (self.tip_slices is None or (isinstance(self.tip_slices, int)
                                                       and self.tip_slices >= 1),
                           "null or a number of slices >= 1"),
            "tip_shrink": (self.tip_shrink > 0, "a number of pixels per slice > 0"),
            "map_step": (self.map_step is None or (isinstance(self.map_step, int)
                                                   and self.map_step >= 1),
                         "null or a number of pixels >= 1"),
        }
        check_fields(self, "flow", checks)

    def window_presets(self) -> tuple[Window, ...]:
        return resolve_windows(list(self.windows))


def opinion_thread(pass_threads: int) -> bool:
    """Whether the second opinions of a pass walk on a thread of their own: when this process
    may use more cores than ``pass_threads``."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return cores > pass_threads


def map_step(config: FlowConfig, height: int, width: int) -> int:
    """Every how many pixels the flow engine keeps its composed maps on (H, W) slices:
    ``config.map_step``, or by default 2 where DIS computes the flow at half the slice's size
    or coarser (the flow it gives is a bilinear enlargement of that, so composing maps on
    every 2nd pixel keeps its detail at a quarter of the cost: ``node_flow_settings``), else
    1."""
    if config.map_step is not None:
        return config.map_step
    return 2 if SliceFlow(config.flow, height, width).detail <= 0.5 else 1


class FlowPropagator:
    """Builds :class:`PropagationSession` objects driven by optical flow (no network)."""

    name = "flow"

    def __init__(self, config: FlowConfig | None = None,
                 keep_disagreement_map: bool = False) -> None:
        self.config = config or FlowConfig()
        self.windows = self.config.window_presets()
        self.keep_disagreement_map = keep_disagreement_map
        self.device = torch.device("cpu")

    @property
    def in_channels(self) -> int:
        return len(self.windows)

    def check_image(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        image = torch.as_tensor(image)
        if image.ndim != 4 or image.dtype != torch.uint8 or image.shape[0] < 1 \
                or image.shape[1] < 1:
            raise InputError(None, f"FlowPropagator.start expects a uint8 volume (D, C, H, W), "
                             f"got {image.dtype} {tuple(image.shape)}",
                             "pass window_volume(hu) of the scan")
        return image.cpu()

    def start(self, image: np.ndarray | torch.Tensor) -> PropagationSession:
        """A session on ``image``: the windowed uint8 volume (D, C, H, W)."""
        image = self.check_image(image)
        height, width = image.shape[-2:]
        # a map_step the flow does not allow fails here, before any key is drawn
        node_flow_settings(self.config.flow, height, width, map_step(self.config, height, width))
        return PropagationSession(image, self.engine, self.keep_disagreement_map)

    def engine(self, session: TrackView) -> FlowPasses:
        return FlowPasses(self.config, session)


class FlowPasses(PassEngine):
    """Flow passes of one session: flows, key shapes and intensity models (cached)."""

    def __init__(self, config: FlowConfig, session: TrackView) -> None:
        self.config = config
        self.session = session
        settings = config.flow
        # passes share only caches that any of them would fill with the same values
        self.pass_threads = settings.threads
        self.stack = session.shared_value(("flow stack", settings.channel,
                                           settings.smooth_sigma), lambda: flow_image(
            session.image, settings.channel, settings.smooth_sigma))
        self.grey = (self.stack if settings.channel == 0 and settings.smooth_sigma == 0
                     else session.shared_value("grey", lambda: session.image[:, 0].numpy()))
        # composed maps are kept at nodes every map_step pixels (RegionMap), where flows
        # are computed and the warp residual is measured, on the slices' block means
        self.map_step = map_step(config, session.height, session.width)
        self.node_stack = self.stack if self.map_step == 1 else session.shared_value(
            ("node stack", settings.channel, settings.smooth_sigma, self.map_step),
            lambda: np.stack([block_mean(image, self.map_step) for image in self.stack]))
        node_settings = node_flow_settings(settings, session.height, session.width,
                                           self.map_step)
        self.flows = session.shared_value(("flows", node_settings), lambda: FlowFields(
            self.node_stack, node_settings, cache_mb=config.flow_cache_mb))
        self.grid = node_grid(session.height, session.width, self.map_step)
        self._shapes: dict[int, dict[int, ObjectShape]] = {}
        self._llr: dict[tuple[int, ...], dict[int, np.ndarray]] = {}  # model keys -> models
        # (key z, object, model keys) -> support
        self._key_supports: dict[tuple[int, int, tuple[int, ...]], float] = {}
        self._argmax: dict[tuple[int, ...], dict[str, Any]] = {}  # segment keys -> rule
        self._region: tuple[slice, slice] | None = None
        self._local_grid: np.ndarray | None = None
        self._unmatched: dict[tuple[int, int], dict[int, np.ndarray]] = {}
        # passes on threads fill each cache entry once: one lock per entry
        self._entry_locks: dict[tuple[int, Any], threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._walks: dict[tuple[int, int], _Walk] = {}  # (key, step) -> its end-rule walk
        # (key, step) -> whether the pass beyond that outermost key, as last run, asked its
        # second opinions (kept when keys change: a pass that did not ask reads no other key)
        self._asked: dict[tuple[int, int], bool] = {}
        # step -> (outermost key, its objects' end-model depths) as keys_changed last saw them
        self._end_depths: dict[int, tuple[int, dict[int, int]]] = {}

    def keys_changed(self, z: int, objects_changed: bool) -> tuple[int, int]:
        self._shapes.pop(z, None)
        self._llr.clear()
        self._key_supports.clear()
        self._argmax.clear()
        self._region = None
        self._local_grid = None
        self._unmatched.clear()
        self._walks.clear()
        self._entry_locks.clear()
        keys = sorted(self.session.key_masks)
        if self.config.end_rule == "none" or not keys:
            self._end_depths.clear()
            return 0, 0
        reaches = []
        for key, step in ((keys[0], -1), (keys[-1], 1)):
            reach, depths = self._outer_reach(key, step)
            if self._end_depths.get(step, (key, depths)) != (key, depths):
                # the same outermost key, but its objects' end models read other keys (a key
                # at the other end moved the halfway point between them): redo that pass
                reach = len(keys) + 1
            self._end_depths[step] = key, depths
            reaches.append(reach)
        return reaches[0], reaches[1]

    def _outer_reach(self, key: int, step: int) -> tuple[int, dict[int, int]]:
        """How many of the outermost keys the pass beyond ``key`` (going ``step``) reads: its
        own, those up to the keys of its second opinions (:meth:`_opinion_keys`; none if that
        pass, as last run, never asked them: it would run the same without them) and the keys
        its objects' end models pool (``shapes.model_depths``: a large organ's model reads its
        outermost key alone); its own alone where it holds no object. Only these decide it, so
        a change farther in leaves that pass as it was, unless it changes which keys the
        models pool (:meth:`keys_changed` compares the second value: object on ``key`` -> how
        many of the model's keys its model reads)."""
        model = self._end_model(key, step)
        labels = [self.session.key_masks[k] for k in model]
        depths = model_depths(labels, self.config.end_model_pixels, self._far_keys(model))
        present = label_values(self.session.key_masks[key])
        # no object on it: the pass is background throughout and reads no other key; a pass
        # that ran without asking its second opinions would run the same without them
        asked = self._asked.get((key, step), True)
        opinions = 1 + self._opinion_keys(key, step)[1] if asked else 1
        models = max((depths[o] for o in present), default=1)
        return (max(opinions, models) if present else 1), {o: depths[o] for o in present}

    def _opinion_keys(self, key: int, step: int) -> tuple[list[int], int]:
        """The ``OPINIONS`` keys inward of the outermost key ``key`` (going ``step``) whose
        walks give its pass's second opinions: the nearest at least ``OPINION_GAP`` slices
        inward, else the nearest; and how many of the keys inward decide that choice (those
        up to the last chosen, or every one and any key added beyond them while the choice
        falls back on the nearest)."""
        inward = self._inward(key, step)
        apart = [i for i, k in enumerate(inward) if abs(k - key) >= OPINION_GAP][:OPINIONS]
        if len(apart) == OPINIONS:
            return [inward[i] for i in apart], apart[-1] + 1
        return inward[:OPINIONS], len(inward) + 1

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        return np.array([0, *object_ids], np.uint8)

    def work_ahead(self, stop: threading.Event) -> None:
        self.flows.warm(stop)

    def pixel_doubt(self, output: PassOutput, box: Box) -> np.ndarray | None:
        confidence = output.confidence_over(box)
        return None if confidence is None else 1.0 - confidence

    def shapes(self, z: int) -> dict[int, ObjectShape]:
        return self._cached(self._shapes, z, lambda: key_shapes(
            self.session.key_masks[z], self.config.clip, self.config.outside_depth))

    def _cached(self, table: dict, key: Any, make: Callable[[], Any]) -> Any:
        """``table[key]``, made by ``make`` the first time (once, whichever pass asks)."""
        value = table.get(key)
        if value is None:
            with self._locks_lock:
                lock = self._entry_locks.setdefault((id(table), key), threading.Lock())
            with lock:
                value = table.get(key)
                if value is None:
                    value = table[key] = make()
        return value

    def intensity(self, keys: tuple[int, ...]) -> dict[int, np.ndarray]:
        """Object -> llr (256,) from the key slices ``keys``, ordered from the end inward
        (``shapes.end_models``: each object's from the first of them that hold
        ``end_model_pixels`` of its pixels)."""
        return self._cached(self._llr, keys, lambda: end_models(
            [(self.grey[z], self.session.key_masks[z]) for z in keys],
            self.config.end_model_pixels, context=self.config.intensity_context,
            far=self._far_keys(keys)))

    def _far_keys(self, model: tuple[int, ...]) -> int:
        """How many of an end model's keys ``model`` (from that end's outermost key inward)
        lie no nearer it than the other end's outermost key: they show the organ's grey values
        in its other half, not near this end, so an object reads them only where the nearer
        keys hold too few of its pixels for a histogram (``shapes.model_depths``)."""
        if len(model) < 2:
            return 0
        keys = sorted(self.session.key_masks)
        end = model[0]
        other = keys[-1] if model[1] > end else keys[0]
        return sum(1 for k in model[1:] if abs(k - end) >= abs(k - other))

    def _end_model(self, key: int, step: int) -> tuple[int, ...]:
        """The keys whose intensity models end objects in a pass beyond the outermost key
        ``key`` (going ``step``): the ``END_MODEL_KEYS`` nearest the end, that key first
        (an organ's grey values near its end, not those of its middle; and all that a key
        change far from the end leaves alone); of these, each object's model reads the
        first that hold ``end_model_pixels`` of its pixels (:meth:`intensity`)."""
        return (key, *self._inward(key, step)[:END_MODEL_KEYS - 1])

    def _inward(self, key: int, step: int) -> list[int]:
        """The keys before ``key`` for a pass going ``step`` from it, nearest first."""
        return sorted((k for k in self.session.key_masks if (k - key) * step < 0),
                      key=lambda k: abs(k - key))

    def run_pass(self, start: int, other: int | None,
                 slices: range) -> Iterator[tuple[int, PassOutput]]:
        """:class:`BoxScores` of O + 1 channels: 0 for background, clipped signed distances
        of the objects (in their boxes); confidence (H, W) from the warp residual."""
        order = list(slices)
        step = 1 if not order or order[0] > start else -1
        second = None
        if other is None and self.config.end_rule != "none" and order:
            # the second opinions walk beside the pass: on a thread of their own when
            # passes may run on threads and a core is left for them (they are as much work
            # as the pass; on 2 cores with 2 pass threads, a third thread only adds handoffs:
            # lidc's aorta redrawn at slice 26, 0.186 -> 0.171 s inline)
            walks = self._second_opinion(start, step)
            second = (SendAhead(walks, "slicevos-opinion")
                      if self.pass_threads > 1 and opinion_thread(self.pass_threads)
                      else SendInline(walks))
        try:
            yield from self._run_pass(start, other, order, step, second)
        finally:
            if second is not None:
                second.close()
            self.flows.prefetch(())  # drop what this thread queued and no longer needs

    def _run_pass(self, start: int, other: int | None, order: list[int], step: int,
                  second: SendInline | None) -> Iterator[tuple[int, PassOutput]]:
        cfg = self.config
        caps: dict[int, int] = {}
        capped_below = cfg.end_support * cfg.opinion_support  # the support a cap needs
        model = self._end_model(start if other is None else other, step)
        segment = (start,) if other is None else tuple(sorted((start, other)))
        self.flows.prefetch((z, z - step) for z in order)
        channel = {o: i + 1 for i, o in enumerate(self.session.object_ids)}
        shapes = self.shapes(start)
        ended: set[int] = set()
        areas: dict[int, list[int]] = {}  # object -> its areas on this pass's slices so far
        tips: dict[int, _Tip] = {}  # object -> its tip, once the end rule has ended it
        watch = EndWatch(cfg.end_patience, step)
        pending: deque[tuple[int, PassOutput]] = deque()  # slices an end may still take back
        fading, absent, zones = self._one_key_parts(start, other)
        # the pass towards the outermost key from the key whose walk gives the pass beyond
        # that key its second opinion: note where the end rule would end each object on the way
        walk = (_Walk(watch) if other is not None and cfg.end_rule != "none"
                and not fading and not any((k - other) * step > 0
                                           for k in self.session.key_masks)
                and start in self._opinion_keys(other, step)[0] else None)
        mapping, previous = self._region_map(), start
        asked = False  # whether the second opinions were asked (kept once the pass is done)
        if second is not None:
            self._asked[start, step] = True  # until the pass is done
        for z in order:
            fill = np.full(len(channel) + 1, -cfg.clip, np.float32)
            fill[0] = 0.0
            if other is None and len(ended) == len(shapes):
                # every object has ended beyond the outermost key: the rest is background
                pending.append((z, PassOutput(BoxScores(
                    (self.session.height, self.session.width), fill,
                    **self._argmax_rule(channel, segment)))))
                yield from release(pending, cfg.end_patience - 1)
                continue
            flow = self.flows.flow(z, previous)
            if second is not None:
                second.send(flow)  # the second opinions walk onto z meanwhile
            mapping.step(flow)
            self.session.stats.add("flow_fields")
            previous = z
            for object_id, score in absent.items():
                fill[channel[object_id]] = score
            scores = BoxScores((self.session.height, self.session.width), fill,
                               **self._argmax_rule(channel, segment))
            looks = {}  # object -> its warp onto z, its end-rule support ratio (inf: not judged)
            #   and the looks_like map that ratio read (None: not judged)
            for object_id, shape in shapes.items():
                if object_id not in ended:
                    fade = (self._fade(fading[object_id], abs(z - start) / abs(other - start))
                            if object_id in fading else None)
                    region, warped = self._warp(shape, mapping, fade)
                    # an object ending in a tip is not judged: the rule ended it already
                    judged = ((walk is not None and object_id not in walk.watch.ends)
                              or (other is None and cfg.end_rule != "none"
                                  and object_id not in tips))
                    ratio, like = (self._support_ratio(start, object_id, shape, z, region,
                                                       warped, model)
                                   if judged else (np.inf, None))
                    looks[object_id] = region, warped, ratio, like
            if second is not None and any(v[2] < capped_below for v in looks.values()):
                # the opinions can end an object only where its own support is this low: else
                # they are not asked (walked then, as far as the pass has come, if ever)
                caps = second.result()
                asked = True
            # beyond the outermost key: the warp residual's confidence over every object's
            # region, for trim (and for the fusion then, measured once)
            trimming = other is None and cfg.end_rule != "none" and cfg.outer_trim is not None
            matches = (self._confidence(start, z, mapping, union(*(v[0] for v in looks.values())),
                                        always=True) if trimming and looks else None)
            for object_id, (region, warped, ratio, like) in looks.items():
                shape = shapes[object_id]
                low = ratio < cfg.end_support
                tip = tips.get(object_id)
                if tip is None:
                    end = None
                    if (object_id in caps and (z - caps[object_id]) * step >= 0
                            and ratio < capped_below):
                        end = z
                    else:
                        if walk is not None and object_id not in walk.watch.ends:
                            walk.watch.update(object_id, z, low)
                        if other is None and cfg.end_rule != "none":
                            end = watch.update(object_id, z, low)
                    if end is not None:
                        tip = tips[object_id] = self._tip(areas.get(object_id, []), end, z)
                        for held, output in pending:
                            if (held - end) * step >= 0:
                                tip.cut(output.scores, channel[object_id], held, shape.floor,
                                        -cfg.clip)
                if tip is not None:
                    if tip.area(z) <= 0:
                        ended.add(object_id)
                        continue
                    warped = level_cut(warped, tip.area(z), shape.floor)
                elif matches is not None and like is not None:
                    warped = trim(warped, like, matches(region), cfg.outer_trim,
                                  cfg.trim_confidence, shape.floor)
                fill[channel[object_id]] = shape.floor
                if object_id in zones:
                    region, warped = _abstain(zones[object_id], region, warped, shape.floor)
                scores.boxes[channel[object_id]] = region, warped
                if tip is None and cfg.tip_slices is not None:
                    areas.setdefault(object_id, []).append(int(np.count_nonzero(warped > 0)))
            confidence = (matches if matches is not None and cfg.use_confidence
                          else self._confidence(start, z, mapping, scores.extent()))
            pending.append((z, PassOutput(scores, confidence, mapping.box)))
            yield from release(pending, cfg.end_patience - 1)
        if walk is not None and order:
            walk.last, walk.mapping = order[-1], mapping
            self._walks[start, step] = walk
        yield from release(pending, 0)
        if second is not None:
            self._asked[start, step] = asked  # the whole pass ran

    def _tip(self, areas: list[int], end: int, z: int) -> _Tip:
        """The tip of an object that the end rule ended on slice ``end`` (found on ``z``),
        from its ``areas`` on the pass's slices before ``end`` (oldest first; the slices held
        since ``end`` appended too): it goes on tapering at the rate it was (``tip_slices``,
        ``tip_shrink``; ``ends.tip_slope``), else it ends there (a tip of no slices)."""
        cfg = self.config
        before = areas[:len(areas) - abs(z - end)]  # the held slices since end are not before
        slope = (tip_slope(before, cfg.tip_shrink)
                 if cfg.tip_slices is not None and before else None)
        if slope is None:
            return _Tip(end, 0, 0.0, 0.0)
        return _Tip(end, cfg.tip_slices, float(before[-1]), slope)

    def _one_key_parts(self, start: int, other: int | None
                       ) -> tuple[dict[int, np.ndarray], dict[int, float],
                                  dict[int, list[tuple[Box, float]]]]:
        """The parts of a segment's objects on one of its keys only (module doc):
        object -> (n,) bool, its parts on ``start`` that this pass fades (scale profiles);
        object on ``other`` only -> this pass's score for it everywhere; object on both ->
        (box around a part on ``other`` only, this pass's least score there)."""
        cfg = self.config
        if other is None or cfg.absent_depth is None:
            return {}, {}, {}
        here, there = self.shapes(start), self.shapes(other)
        erode = cfg.end_profile == "erode"

        def score(radius: float) -> float:
            # erode: as far outside here as the part is deep inside there (the fused shape
            # erodes); else abstain: the other pass fades it
            return -min(cfg.absent_depth * radius, cfg.clip) if erode else ABSTAIN

        fading = {} if erode else {
            o: u for o, u in self._unmatched_parts(start, other).items() if u.any()}
        absent = {o: score(shape.radius) for o, shape in there.items() if o not in here}
        height, width = self.session.height, self.session.width
        zones: dict[int, list[tuple[Box, float]]] = {}
        for o, unmatched in self._unmatched_parts(other, start).items():
            if o in here and unmatched.any():
                parts = there[o].parts
                zones[o] = [((slice(rows.start, min(rows.stop, height)),
                              slice(cols.start, min(cols.stop, width))), score(radius))
                            for (rows, cols), radius in zip(
                                parts.zones(unmatched, there[o].top, there[o].left),
                                parts.radii[unmatched], strict=True)]
        return fading, absent, zones

    def _unmatched_parts(self, key: int, other: int) -> dict[int, np.ndarray]:
        """Object on ``key`` -> (n,) bool, its parts there with no counterpart on ``other``
        (``shapes.unmatched_parts``; cached until keys change)."""
        def make() -> dict[int, np.ndarray]:
            other_labels = self.session.key_masks[other]
            there = self.shapes(other)
            return {o: unmatched_parts(shape, other_labels == o if o in there else None)
                    for o, shape in self.shapes(key).items()}

        return self._cached(self._unmatched, (key, other), make)

    def _fade(self, fading: np.ndarray, t: float) -> np.ndarray:
        """(n,) the scale of each part a fraction ``t`` of the way to the key without the
        parts where ``fading`` is True (module doc, ``end_profile`` taper or ellipse)."""
        tau = 1.0 / (1.0 + self.config.absent_depth)
        if t >= tau:
            scale = 0.0
        elif self.config.end_profile == "ellipse":
            scale = float(np.sqrt(1.0 - (t / tau) ** 2))
        else:
            scale = (1.0 - t / tau) / (1.0 - t)
        return np.where(fading, scale, 1).astype(np.float32)

    def _support_ratio(self, key: int, object_id: int, shape: ObjectShape, z: int,
                       region: tuple[slice, slice], warped: np.ndarray,
                       model: tuple[int, ...]) -> tuple[float, np.ndarray]:
        """The intensity end rule's measure: the support of the object, warped from ``key``
        onto ``z``, over its support on ``key`` (``model``: the keys of the intensity model,
        :meth:`_end_model`); it has ended where this is below ``end_support``. And what the
        support read: ``ends.looks_like`` over ``region``."""
        key_support = self._key_support(key, object_id, shape, model)
        here, looks = self._support(object_id, z, region, warped, shape.radius, model)
        return (here / key_support if key_support > 0 else float("inf")), looks  # inf: never low

    def _second_opinion(self, start: int, step: int
                        ) -> Generator[dict[int, int], np.ndarray | None, None]:
        """Where the objects end seen from the ``OPINIONS`` keys before ``start`` (the
        nearest inward), for the objects whose end from there lies beyond ``start``: object
        -> the nearest such slice. From there on a pass beyond the outermost key ends an
        object where its own support merely falls (``opinion_support``), so a key near an
        organ's end that looks like what follows (the IVC entering the right atrium; a
        gallbladder's last slices, two keys there) carries the organ little further than the
        keys before it saw it go, while an organ that the walk lost but the pass still
        follows well (a liver whose shape changed between its keys) goes on.

        A generator, walking in step with the pass so that it goes no further than the
        pass does: primed with ``next`` (walks up to ``start``), then sent the pass's flow
        onto each of its slices in turn, it gives the ends found so far."""
        inner = self._opinion_keys(start, step)[0]
        model = self._end_model(start, step)
        walks = [self._opinion(key, start, step, model) for key in inner]
        for walk in walks:
            next(walk)
        caps: dict[int, int] = {}
        while True:
            flow = yield caps
            for ends in [walk.send(flow) for walk in walks]:
                for o, e in ends.items():
                    if (e - start) * step > 0 and (e - caps.get(o, e)) * step <= 0:
                        caps[o] = e

    def _opinion(self, key: int, start: int, step: int, model: tuple[int, ...]
                 ) -> Generator[dict[int, int], np.ndarray | None, None]:
        """The end-rule walk from ``key`` (inward of ``start``) for :meth:`_second_opinion`:
        primed, it walks up to ``start`` (going on from where the pass from ``key`` to
        ``start`` left its walk); then each flow sent walks one slice on. Gives the ends
        found so far (object -> slice)."""
        shapes = self.shapes(key)
        walk = self._walks.pop((key, step), None)
        if walk is not None and walk.last == start - step:
            # the pass from ``key`` to ``start`` walked there already: go on from there
            watch, mapping, previous = walk.watch, walk.mapping, walk.last
        else:
            watch = EndWatch(self.config.end_patience, step)
            mapping, previous = self._region_map(), key
        ends = watch.ends
        before = range(previous + step, start + step, step)  # up to the pass's key: no cap
        self.flows.prefetch((z, z - step) for z in before)
        for z in before:
            if len(ends) < len(shapes):
                self._walk_ends(key, shapes, z, self.flows.flow(z, z - step), mapping, watch,
                                model)
        z = start
        while True:
            flow = yield ends
            z += step
            if len(ends) < len(shapes) and flow is not None:
                self._walk_ends(key, shapes, z, flow, mapping, watch, model)

    def _walk_ends(self, key: int, shapes: dict[int, ObjectShape], z: int, flow: np.ndarray,
                   mapping: RegionMap, watch: EndWatch, model: tuple[int, ...]) -> None:
        """One slice ``z`` of a second-opinion walk from ``key`` (``flow`` from ``z`` onto
        the slice before it): the end rule for every object not ended yet (``watch``
        updated)."""
        mapping.step(flow)
        for object_id, shape in shapes.items():
            if object_id not in watch.ends:
                watch.update(object_id, z, self._support_ratio(
                    key, object_id, shape, z, *self._warp(shape, mapping), model)[0]
                    < self.config.end_support)

    def _argmax_rule(self, channel: dict[int, int], keys: tuple[int, ...]) -> dict[str, Any]:
        """:class:`BoxScores` ``scale``: (O + 1,) each object's size for the argmax, its
        largest radius over the segment's ``keys``, between 1 px and ``clip`` (depths
        saturate there), 1 for the background; and ``nested``: the channels of objects that
        another object holds on one of those keys (cached until keys change). Only the
        segment's keys, so that a key elsewhere leaves the segment as it is."""
        def make() -> dict[str, Any]:
            scale = np.ones(len(channel) + 1, np.float32)
            nested: set[int] = set()
            for z in keys:
                for object_id, shape in self.shapes(z).items():
                    c = channel[object_id]
                    scale[c] = max(scale[c], min(shape.radius, self.config.clip))
                    nested.update(channel[o] for o in shape.holds if o in channel)
            return {"scale": scale, "nested": frozenset(nested)}

        return self._cached(self._argmax, keys, make)

    def _region_map(self) -> RegionMap:
        """A fresh map of the key onto itself over the track's region (``_confidence_region``),
        for a pass to compose flows into."""
        region, step = self._confidence_region(), self.map_step
        if self._local_grid is None:
            self._local_grid = identity_map(*(-(-(part.stop - part.start) // step)
                                              for part in region))
        return RegionMap(self.grid, region, self._local_grid, step)

    def _warp(self, shape: ObjectShape, mapping: RegionMap,
              part_scales: np.ndarray | None = None) -> tuple[Box, np.ndarray]:
        """The object's distances warped onto the slice, inside the region (rows, cols) where
        its key crop can land (the crop grown by the largest displacement over it); with
        ``part_scales`` (n,), each part shrunk about its centroid (``shapes.scaled_lookup``)."""
        height, width = shape.distance.shape
        rows = slice(shape.top, shape.top + height)
        cols = slice(shape.left, shape.left + width)
        # displacements are smooth: every 4th pixel bounds them to within a pixel or two
        reach = int(np.ceil(mapping.shift((rows, cols)))) + 3
        region = mapping.clamp((slice(rows.start - reach, rows.stop + reach),
                                slice(cols.start - reach, cols.stop + reach)))
        local = mapping.relative(region, (shape.left, shape.top))
        scale = None
        if part_scales is not None:
            local, scale = scaled_lookup(shape, local, part_scales)
        warped = cv2.remap(shape.distance, local, None, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=float(shape.floor))
        if scale is not None:
            warped = np.where(scale > 0, warped * scale, np.float32(shape.floor))
        return region, warped

    def _support(self, object_id: int, z: int, region: tuple[slice, slice],
                 warped: np.ndarray, radius: float, model: tuple[int, ...]
                 ) -> tuple[float, np.ndarray]:
        """:func:`~slicevos.inference.engines.flow.ends.support` of the object on slice
        ``z`` under the intensity model of the keys ``model``, and the ``looks_like`` map
        (over ``region``) it read."""
        # cv2.LUT: the llr of each grey value, ~4x numpy's fancy indexing
        looks = looks_like(cv2.LUT(self.grey[z][region], self.intensity(model)[object_id]),
                           self.config.intensity_sigma, radius)
        return support(looks, warped), looks

    def _key_support(self, z: int, object_id: int, shape: ObjectShape,
                     model: tuple[int, ...]) -> float:
        """:meth:`_support` of the object on its own key slice ``z`` (the yardstick; cached,
        as every slice of a pass beyond the outermost key compares against it)."""
        height, width = shape.distance.shape
        region = (slice(shape.top, shape.top + height), slice(shape.left, shape.left + width))
        return self._cached(self._key_supports, (z, object_id, model), lambda: self._support(
            object_id, z, region, shape.distance, shape.radius, model)[0])

    def _confidence(self, key: int, z: int, mapping: RegionMap, extent: Box | None,
                    always: bool = False) -> Callable[[Box], np.ndarray] | None:
        """The warp residual's confidence (module doc) on slice ``z`` of a pass from
        ``key``, as a function of a box inside the map's box: measured now over the pass's
        objects' ``extent`` (what the fusion reads, mostly), elsewhere only if read. None
        when the fusion does not use it (``use_confidence``), unless ``always``."""
        if not (self.config.use_confidence or always):
            return None
        return _Measured(partial(self._confidence_over, key, z, mapping.frozen()),
                         None if extent is None else intersection(extent, mapping.box))

    def _confidence_over(self, key: int, z: int, mapping: RegionMap, box: Box) -> np.ndarray:
        """Float32 in (0, 1] over ``box``: as if measured over the whole map's box (the
        residual is read around it as far as its blur reaches)."""
        cfg, step = self.config, self.map_step
        reach = int(np.ceil(4 * cfg.residual_sigma)) + 1 if cfg.residual_sigma > 0 else 0
        grown = mapping.clamp((slice(box[0].start - reach, box[0].stop + reach),
                               slice(box[1].start - reach, box[1].stop + reach)))
        # at the map's nodes (the slice's image there: its blocks' means), then at every pixel
        nodes = mapping.cover(grown)
        warped = cv2.remap(self.stack[key], mapping.at_nodes(nodes), None, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        residual = cv2.absdiff(warped, self.node_stack[z][nodes]).astype(np.float32)
        if cfg.residual_sigma > 0:
            residual = cv2.GaussianBlur(residual, (0, 0), cfg.residual_sigma / step)
        confidence = cv2.exp(residual * np.float32(-1.0 / cfg.residual_scale))
        return mapping.to_pixels(confidence, nodes, box)

    def _confidence_region(self, margin: int = 64) -> tuple[slice, slice]:
        """The bounding box of every object on every key of this track, grown by ``margin``
        pixels (object boxes move less than that between keys; cached until keys change):
        where passes compose their maps (and may measure the confidence)."""
        if self._region is None:
            boxes = [(shape.top, shape.left, shape.distance.shape) for z in
                     self.session.key_masks for shape in self.shapes(z).values()]
            height, width = self.session.height, self.session.width
            if not boxes:
                self._region = (slice(0, height), slice(0, width))
            else:
                top = min(b[0] for b in boxes)
                left = min(b[1] for b in boxes)
                bottom = max(b[0] + b[2][0] for b in boxes)
                right = max(b[1] + b[2][1] for b in boxes)
                self._region = (slice(max(0, top - margin), min(height, bottom + margin)),
                                slice(max(0, left - margin), min(width, right + margin)))
            step = self.map_step  # whole blocks of the maps' nodes
            self._region = tuple(slice(part.start // step * step,
                                       min(size, -(-part.stop // step) * step))
                                 for part, size in zip(self._region, (height, width),
                                                       strict=True))
        return self._region


def _abstain(zones: list[tuple[Box, float]], region: Box, values: np.ndarray, floor: float
             ) -> tuple[Box, np.ndarray]:
    """``values`` (in ``region``) grown to cover the ``zones`` (``floor`` where new) and raised
    to at least each zone's score there: this pass leaves those places (mostly) to the other
    direction."""
    boxes = [box for box, _ in zones]
    rows = slice(min(region[0].start, *(b[0].start for b in boxes)),
                 max(region[0].stop, *(b[0].stop for b in boxes)))
    cols = slice(min(region[1].start, *(b[1].start for b in boxes)),
                 max(region[1].stop, *(b[1].stop for b in boxes)))
    out = np.full((rows.stop - rows.start, cols.stop - cols.start), floor, np.float32)
    out[region[0].start - rows.start:region[0].stop - rows.start,
        region[1].start - cols.start:region[1].stop - cols.start] = values
    for (zone_rows, zone_cols), score in zones:
        view = out[zone_rows.start - rows.start:zone_rows.stop - rows.start,
                   zone_cols.start - cols.start:zone_cols.stop - cols.start]
        np.maximum(view, np.float32(score), out=view)
    return (rows, cols), out


class _Measured:
    """A per-pixel map of a slice (``measure(box)``: its values over a box), measured over
    ``box`` up front and elsewhere when asked (a function of a box, as
    :class:`PassOutput` takes its confidence)."""

    def __init__(self, measure: Callable[[Box], np.ndarray], box: Box | None) -> None:
        self.measure, self.box = measure, box
        self.values = None if box is None else measure(box)

    def __call__(self, box: Box) -> np.ndarray:
        if self.box is not None and intersection(box, self.box) == box:
            return self.values[within(box, self.box)]
        return self.measure(box)


@dataclass(frozen=True)
class _Tip:
    """An ending object's tip along a pass: from slice ``end`` on, for at most ``slices``
    slices, its area goes on changing by ``slope`` pixels per slice from ``last`` (its area
    on the slice before ``end``); 0 beyond."""

    end: int
    slices: int
    last: float
    slope: float

    def area(self, z: int) -> float:
        """The tip's area on slice ``z`` (pixels; <= 0: the object has ended there)."""
        k = abs(z - self.end) + 1
        return self.last + k * self.slope if k <= self.slices else 0.0

    def cut(self, scores: BoxScores, c: int, z: int, floor: float, fill: float) -> None:
        """Channel ``c`` of a slice ``z`` held back since ``end``: its tip there (its
        values lowered to the tip's area, ``ends.level_cut``), or dropped (``fill``)."""
        area = self.area(z)
        if area <= 0 or c not in scores.boxes:
            scores.drop(c, fill)
            return
        region, values = scores.boxes[c]
        scores.boxes[c] = region, level_cut(values, area, floor)


@dataclass
class _Walk:
    """Where the end rule would end each object seen from a key (``watch.ends``), walking
    one way up to slice ``last``, with the walk's state there (its low runs and its map onto
    the key), for :meth:`FlowPasses._second_opinion` to go on from."""

    watch: EndWatch
    last: int = -1
    mapping: RegionMap | None = None
