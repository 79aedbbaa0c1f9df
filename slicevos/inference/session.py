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
any key slice every other slice is background.

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

Re-propagation: :meth:`PropagationSession.add_mask` on a propagated session marks only the
segments next to that key dirty; the next :meth:`~PropagationSession.propagate` recomputes
those (between the neighbouring keys, or to the volume end) and keeps every other label.

Memory: forward-pass scores of a two-key segment wait for the backward pass on the CPU in
float16 (L x H x W x 2 bytes per slice of the segment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from slicevos.errors import InputError
from slicevos.inference.box_scores import BoxScores

Scores = torch.Tensor | BoxScores


def fusion_weight(z: int, z_left: int, z_right: int, conf_fwd: np.ndarray | None = None,
                  conf_bwd: np.ndarray | None = None) -> float | np.ndarray:
    """Weight of the forward pass (from key ``z_left``) on slice ``z_left < z < z_right``:
    ``w_l = (z_right - z) / (z_right - z_left)`` (the nearer key weighs more); with per-pixel
    confidences (H, W) in (0, 1] of both passes, ``w_l c_l / (w_l c_l + w_r c_r)``."""
    if not z_left < z < z_right:
        raise ValueError(f"fuse_directions needs z_left < z < z_right, got {z_left}, {z}, "
                         f"{z_right}")
    weight_left = (z_right - z) / (z_right - z_left)
    if conf_fwd is None or conf_bwd is None:
        return weight_left
    left = weight_left * np.maximum(conf_fwd, 1e-3)
    right = (1.0 - weight_left) * np.maximum(conf_bwd, 1e-3)
    return (left / (left + right)).astype(np.float32)


def fuse_directions(prob_fwd: Scores, prob_bwd: Scores, z: int, z_left: int, z_right: int,
                    conf_fwd: np.ndarray | None = None,
                    conf_bwd: np.ndarray | None = None) -> Scores:
    """Weighted mean (:func:`fusion_weight`) of the forward and backward passes' scores
    ((L, H, W) tensors or :class:`BoxScores`) of slice ``z``."""
    weight = fusion_weight(z, z_left, z_right, conf_fwd, conf_bwd)
    if isinstance(prob_fwd, BoxScores):
        return prob_fwd.blend(prob_bwd, weight)
    if isinstance(weight, np.ndarray):
        weight = torch.from_numpy(weight).to(prob_fwd)
    return torch.lerp(prob_bwd, prob_fwd, weight)


def score_channels(scores: Scores) -> np.ndarray:
    """(H, W) int64: the argmax channel of the scores (ties: the lower channel)."""
    if isinstance(scores, BoxScores):
        return scores.argmax()
    return scores.max(0).indices.cpu().numpy()


def channel_disagreement(channels_a: np.ndarray, channels_b: np.ndarray) -> float:
    """Fraction of the pixels that either map (H, W) calls foreground (> 0) on which the two
    differ; 0 where both are all background."""
    foreground = (channels_a > 0) | (channels_b > 0)
    count = int(foreground.sum())
    return float(((channels_a != channels_b) & foreground).sum()) / count if count else 0.0


@dataclass
class SessionStats:
    """Instrumentation: slices decoded (one pass, one slice), slices key-encoded and value
    encodings (STCN), optical-flow fields computed (flow), and the largest number of non-key
    (recent) frames any STCN memory bank held."""

    decoded_slices: int = 0
    key_encoded_slices: int = 0
    value_encodings: int = 0
    peak_recent_frames: int = 0
    flow_fields: int = 0


@dataclass
class PassOutput:
    """One slice of one pass: ``scores`` ((L, H, W) float32 tensor, or :class:`BoxScores`)
    and, where the engine has one, a per-pixel ``confidence`` (H, W) float32 in (0, 1]."""

    scores: Scores
    confidence: np.ndarray | None = None


class PassEngine:
    """What an engine does for a :class:`PropagationSession` (see the module doc). An engine
    instance belongs to one session and reads its ``key_masks`` and ``object_ids``."""

    def check_key(self, z: int, labels: np.ndarray) -> None:
        """Raise InputError for key labels this engine cannot take."""

    def keys_changed(self, z: int, objects_changed: bool) -> None:
        """Key slice ``z`` was set or replaced; ``objects_changed``: the object list grew."""

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        """uint8 (L,): the label of each score channel (applied to the argmax)."""
        raise NotImplementedError

    def run_pass(self, start: int, other: int | None,
                 slices: range) -> Iterator[tuple[int, PassOutput]]:
        """One direction from key ``start`` through ``slices`` (in order); ``other`` is the
        segment's other key (None beyond the outermost key)."""
        raise NotImplementedError

    def one_direction_uncertainty(self, output: PassOutput, channels: np.ndarray) -> float:
        """Doubt in [0, 1] about a slice seen from one key only (beyond the outermost key);
        ``channels`` (H, W) is the argmax channel of ``output.scores``."""
        raise NotImplementedError



class PropagationSession:
    """State of one volume: key masks, labels (D, H, W) uint8 and which slices are up to date;
    the engine made by ``engine_factory(session)`` does the passes."""

    def __init__(self, image: torch.Tensor, engine_factory: Callable[[PropagationSession],
                 PassEngine], keep_disagreement_map: bool = False) -> None:
        self.image = image
        self.depth, _, self.height, self.width = image.shape
        self.key_masks: dict[int, np.ndarray] = {}
        self.object_ids: list[int] = []
        self.labels = np.zeros((self.depth, self.height, self.width), np.uint8)
        self.up_to_date = np.zeros(self.depth, bool)
        self.stats = SessionStats()
        self.slice_uncertainty = np.full(self.depth, np.nan, np.float32)
        self._disagreement = (np.zeros((self.depth, self.height, self.width), bool)
                              if keep_disagreement_map else None)
        self.engine = engine_factory(self)

    @property
    def key_slices(self) -> list[int]:
        return sorted(self.key_masks)

    def add_mask(self, z: int, labels: np.ndarray) -> None:
        """Make slice ``z`` a key slice with ``labels`` (H, W) (label values = object ids,
        0 = background). Marks the segments next to ``z`` for re-propagation."""
        if not 0 <= z < self.depth:
            raise InputError(None, f"key slice {z} is outside the volume of {self.depth} "
                             f"slices", f"pass 0 <= z < {self.depth}")
        labels = np.asarray(labels)
        if labels.shape != (self.height, self.width):
            raise InputError(None, f"key mask of slice {z} has shape {labels.shape}, expected "
                             f"(H, W) = {(self.height, self.width)}", "pass one 2D label slice")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 255:
            raise InputError(None, f"key mask of slice {z} must hold integer labels 0..255, got "
                             f"{labels.dtype} in [{labels.min()}, {labels.max()}]",
                             "pass a uint8 label slice")
        self.engine.check_key(z, labels)
        labels = labels.astype(np.uint8)
        below = [k for k in self.key_masks if k < z]
        above = [k for k in self.key_masks if k > z]
        low, high = (max(below) + 1 if below else 0), (min(above) if above else self.depth)
        self.up_to_date[low:high] = False
        self.key_masks[z] = labels
        self.labels[z] = labels
        self.slice_uncertainty[z] = 0.0
        self.up_to_date[z] = True
        object_ids = sorted(set(self.object_ids) | {int(v) for v in np.unique(labels) if v})
        changed = object_ids != self.object_ids
        self.object_ids = object_ids
        self.engine.keys_changed(z, changed)

    def run(self) -> np.ndarray:
        """Propagate everything that is out of date; returns the labels (D, H, W) uint8."""
        for _ in self.propagate():
            pass
        return self.labels

    def propagate(self) -> Iterator[tuple[int, np.ndarray]]:
        """Generator of ``(z, labels (H, W) uint8)`` for every out-of-date non-key slice, as
        it finishes (each exactly once per call); updates :attr:`labels` as it goes."""
        if not self.key_masks:
            raise InputError(None, "no key slice to propagate from",
                             "call session.add_mask(z, labels) at least once")
        keys = self.key_slices
        bounds = [None, *keys, None]
        for left, right in zip(bounds[:-1], bounds[1:], strict=True):
            low = 0 if left is None else left + 1
            high = self.depth if right is None else right
            if low < high and not self.up_to_date[low:high].all():
                yield from self._segment(left, right, low, high)

    def _counted(self, passes: Iterator[tuple[int, PassOutput]]
                 ) -> Iterator[tuple[int, PassOutput]]:
        for z, output in passes:
            self.stats.decoded_slices += 1
            yield z, output

    def _segment(self, left: int | None, right: int | None, low: int,
                 high: int) -> Iterator[tuple[int, np.ndarray]]:
        """Segment the slices low..high-1 between keys ``left`` and ``right`` (None: no key)."""
        engine = self.engine
        if not self.object_ids:
            finished: Iterator[tuple[int, np.ndarray | None]] = (
                (z, None) for z in range(low, high))
        elif left is None or right is None:
            forward = right is None
            finished = self._one_direction(self._counted(engine.run_pass(
                left if forward else right, None, range(low, high)[::1 if forward else -1])))
        else:
            stored = {z: _to_cpu_half(out) for z, out in self._counted(
                engine.run_pass(left, right, range(low, high)))}
            finished = ((z, self._fuse(z, _from_cpu_half(stored.pop(z), out), out, left, right))
                        for z, out in self._counted(engine.run_pass(
                            right, left, range(high - 1, low - 1, -1))))
        lut = engine.label_lut(self.object_ids)
        for z, channels in finished:
            self.labels[z] = 0 if channels is None else lut[channels]
            if channels is None:
                self.slice_uncertainty[z] = 0.0
            self.up_to_date[z] = True
            yield z, self.labels[z].copy()

    def _one_direction(self, passes: Iterator[tuple[int, PassOutput]]
                       ) -> Iterator[tuple[int, np.ndarray]]:
        for z, output in passes:
            channels = score_channels(output.scores)
            self.slice_uncertainty[z] = float(self.engine.one_direction_uncertainty(output,
                                                                                    channels))
            yield z, channels

    def _fuse(self, z: int, fwd: PassOutput, bwd: PassOutput, left: int,
              right: int) -> np.ndarray:
        """:func:`fuse_directions` -> the argmax channels (H, W), recording how much the two
        directions disagree on ``z`` (:attr:`slice_uncertainty`, and the pixel map when
        ``keep_disagreement_map``)."""
        channels_fwd, channels_bwd = score_channels(fwd.scores), score_channels(bwd.scores)
        self.slice_uncertainty[z] = channel_disagreement(channels_fwd, channels_bwd)
        if self._disagreement is not None:
            self._disagreement[z] = channels_fwd != channels_bwd
        return score_channels(fuse_directions(fwd.scores, bwd.scores, z, left, right,
                                              fwd.confidence, bwd.confidence))

    def direction_disagreement_map(self) -> np.ndarray:
        """uint8 (D, H, W): 255 where the forward and backward passes disagreed (slices
        between two keys), 0 elsewhere. Needs ``keep_disagreement_map=True``."""
        if self._disagreement is None:
            raise ValueError("the session keeps no disagreement map; build the propagator "
                             "with keep_disagreement_map=True")
        return self._disagreement.view(np.uint8) * np.uint8(255)


def _to_cpu_half(output: PassOutput) -> PassOutput:
    scores = output.scores
    if isinstance(scores, torch.Tensor):
        scores = scores.to("cpu", torch.float16)
    return PassOutput(scores, output.confidence)


def _from_cpu_half(stored: PassOutput, like: PassOutput) -> PassOutput:
    scores = stored.scores
    if isinstance(scores, torch.Tensor):
        scores = scores.to(like.scores)
    return PassOutput(scores, stored.confidence)
