"""Propagate key-slice masks through a volume with the STCN network (SAM2 / Cutie style).

::

    propagator = Propagator(net, device="cuda")
    session = propagator.start(image)          # windowed uint8 volume (D, C, H, W)
    session.add_mask(40, labels_40)            # (H, W) uint8; label values = object ids
    session.add_mask(90, labels_90)            # any number of key slices
    for z, labels_z in session.propagate():    # slices as they finish (progress bars)
        ...
    labels = session.run()                     # or everything at once: (D, H, W) uint8

Objects are the label values seen on any key slice (a stable sorted list); an object absent
on a key slice is background there. Key slices come out exactly as given. With no object on
any key slice every other slice is background (nothing to propagate, in both modes).

Object modes: the network's ``object_mode`` picks the strategy of
``slicevos.inference.object_modes`` (per_object: one value per object, background + objects
probabilities; joint: one value per slice from the one-hot class mask, class probabilities,
argmax = class id, key labels < K, cost independent of the object count); all else is shared.

Fusion rule (:func:`fuse_directions`). The key slices cut the volume into segments. A slice
``z`` between two keys ``zl < z < zr`` is segmented twice: by a forward pass from ``zl`` and a
backward pass from ``zr``. Each pass keeps BOTH keys of its segment in memory for the whole
pass (plus its own recent frames, every ``memory_every`` slices, at most
``max_memory_frames``), so no pass ever sees only one key. The two passes' probabilities
(background + objects, or the K classes) are averaged with weights by distance,
``w_l = (zr - z) / (zr - zl)`` for the forward pass and ``w_r = (z - zl) / (zr - zl)`` for the
backward one, and the argmax is the label. Slices below the lowest key (above the highest)
get the backward (forward) pass only.

Uncertainty (``session.slice_uncertainty``, (D,) float32, NaN until a slice is done): 0 on
key slices; between two keys the fraction of foreground pixels on which the forward and
backward passes' labels differ (``slicevos.inference.uncertainty.label_disagreement``);
beyond the outermost keys (one direction) 1 - the mean top probability over the predicted
foreground. ``keep_disagreement_map=True`` also keeps the pixel map of direction disagreement.

Re-propagation: :meth:`PropagationSession.add_mask` on a propagated session marks only the
segments next to that key dirty; the next :meth:`~PropagationSession.propagate` recomputes
those (between the neighbouring keys, or to the volume end) and keeps every other label.

Key-encoder features are computed once per slice and cached (:class:`FeatureCache`, full by
default, LRU with ``feature_cache_slices``; ``feature_dtype`` / ``features_on_cpu`` set how
they are stored). Forward-pass probabilities of a two-key segment wait for the backward pass
on the CPU in float16 ((O + 1) or K x H x W x 2 bytes per slice of the segment).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike

import numpy as np
import torch

from slicevos.config import from_dict
from slicevos.errors import InputError
from slicevos.inference.checkpoints import load_with_windows
from slicevos.inference.memory_bank import FeatureCache, MemoryBank
from slicevos.inference.object_modes import object_mode
from slicevos.inference.uncertainty import label_disagreement, low_confidence
from slicevos.models.propagation import KeyFeatures, PropagationModelConfig, PropagationNet
from slicevos.preprocessing.padding import crop_to, pad_to_multiple
from slicevos.preprocessing.windowing import Window


def fuse_directions(prob_fwd: torch.Tensor, prob_bwd: torch.Tensor, z: int, z_left: int,
                    z_right: int) -> torch.Tensor:
    """Distance-weighted mean of the forward pass (from key ``z_left``) and the backward pass
    (from key ``z_right``) probabilities of slice ``z_left < z < z_right``: the nearer key
    weighs more, ``w_l = (z_right - z) / (z_right - z_left)``, ``w_r = 1 - w_l``."""
    if not z_left < z < z_right:
        raise ValueError(f"fuse_directions needs z_left < z < z_right, got {z_left}, {z}, "
                         f"{z_right}")
    weight_left = (z_right - z) / (z_right - z_left)
    return weight_left * prob_fwd + (1.0 - weight_left) * prob_bwd


@dataclass
class SessionStats:
    """Instrumentation: slices decoded, slices key-encoded, value encodings, and the largest
    number of non-key (recent) frames any memory bank held."""

    decoded_slices: int = 0
    key_encoded_slices: int = 0
    value_encodings: int = 0
    peak_recent_frames: int = 0


class Propagator:
    """Builds :class:`PropagationSession` objects for one STCN network, per_object or joint
    (the model is moved to ``device`` and set to eval mode).

    ``memory_every``: a pass adds its current slice to the memory every that many slices;
    ``max_memory_frames``: non-key frames a pass keeps (oldest dropped); ``feature_dtype``:
    storage dtype of cached features and memory (float16 halves memory, computation runs in
    the model's dtype); ``features_on_cpu``: keep them on the CPU (long volumes);
    ``feature_cache_slices``: None = cache every slice, else an LRU of that many;
    ``key_batch_size``: slices key-encoded per network call; ``keep_disagreement_map``:
    sessions keep a (D, H, W) bool map of where the two directions disagree.
    """

    def __init__(self, model: PropagationNet, device: torch.device | str = "cpu",
                 memory_every: int = 5, max_memory_frames: int = 8,
                 feature_dtype: torch.dtype = torch.float16, features_on_cpu: bool = False,
                 feature_cache_slices: int | None = None, key_batch_size: int = 8,
                 keep_disagreement_map: bool = False) -> None:
        if memory_every < 1 or max_memory_frames < 0 or key_batch_size < 1:
            raise ValueError(f"need memory_every >= 1, max_memory_frames >= 0, key_batch_size "
                             f">= 1, got {memory_every}, {max_memory_frames}, {key_batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mode = object_mode(model)
        self.memory_every = memory_every
        self.max_memory_frames = max_memory_frames
        self.feature_dtype = feature_dtype
        self.storage_device = torch.device("cpu") if features_on_cpu else self.device
        self.feature_cache_slices = feature_cache_slices
        self.key_batch_size = key_batch_size
        self.keep_disagreement_map = keep_disagreement_map
        self.compute_dtype = next(model.parameters()).dtype

    def start(self, image: np.ndarray | torch.Tensor) -> PropagationSession:
        """A session on ``image``: the windowed uint8 volume (D, C, H, W)."""
        image = torch.as_tensor(image)
        if image.ndim != 4 or image.dtype != torch.uint8 or image.shape[0] < 1 \
                or image.shape[1] != self.model.in_channels:
            raise InputError(None, f"Propagator.start expects a uint8 volume (D, "
                             f"C={self.model.in_channels}, H, W), got {image.dtype} "
                             f"{tuple(image.shape)}", "pass window_volume(hu) of the scan")
        return PropagationSession(self, image.cpu())

    def new_memory_bank(self) -> MemoryBank:
        return MemoryBank(self.max_memory_frames, self.device, self.compute_dtype,
                          self.feature_dtype, self.storage_device)


class PropagationSession:
    """State of one volume: key masks, cached features, labels (D, H, W) uint8 and which
    slices are up to date. Made by :meth:`Propagator.start`."""

    def __init__(self, propagator: Propagator, image: torch.Tensor) -> None:
        self.propagator = propagator
        self.net = propagator.model
        self.image = image
        self.depth, _, self.height, self.width = image.shape
        self.key_masks: dict[int, np.ndarray] = {}
        self.object_ids: list[int] = []
        self.labels = np.zeros((self.depth, self.height, self.width), np.uint8)
        self.up_to_date = np.zeros(self.depth, bool)
        self.stats = SessionStats()
        self.features = FeatureCache(propagator.device, propagator.compute_dtype,
                                     propagator.feature_dtype, propagator.storage_device,
                                     propagator.feature_cache_slices)
        self.mode = propagator.mode
        self.slice_uncertainty = np.full(self.depth, np.nan, np.float32)
        self._disagreement = (np.zeros((self.depth, self.height, self.width), bool)
                              if propagator.keep_disagreement_map else None)
        self._key_values: dict[int, torch.Tensor] = {}  # z -> (O or 1, Cv, h, w)

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
        self.mode.check_key(z, labels)
        labels = labels.astype(np.uint8)
        below = [k for k in self.key_masks if k < z]
        above = [k for k in self.key_masks if k > z]
        low, high = (max(below) + 1 if below else 0), (min(above) if above else self.depth)
        self.up_to_date[low:high] = False
        self.key_masks[z] = labels
        self.labels[z] = labels
        self.slice_uncertainty[z] = 0.0
        self.up_to_date[z] = True
        self._key_values.pop(z, None)
        object_ids = sorted(set(self.object_ids) | {int(v) for v in np.unique(labels) if v})
        if object_ids != self.object_ids:
            self.object_ids = object_ids
            if self.mode.values_depend_on_objects:
                self._key_values.clear()

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

    def _segment(self, left: int | None, right: int | None, low: int,
                 high: int) -> Iterator[tuple[int, np.ndarray]]:
        """Segment the slices low..high-1 between keys ``left`` and ``right`` (None: no key)."""
        if not self.object_ids:
            finished = ((z, None) for z in range(low, high))
        elif left is None or right is None:
            forward = right is None
            finished = self._pass(left if forward else right, None,
                                  range(low, high)[::1 if forward else -1])
        else:
            forward = {z: p.to("cpu", torch.float16)
                       for z, p in self._pass(left, right, range(low, high))}
            finished = ((z, self._fuse(z, forward.pop(z).to(p), p, left, right))
                        for z, p in self._pass(right, left, range(high - 1, low - 1, -1)))
        lut = self.mode.label_lut(self.object_ids)
        for z, probs in finished:
            if probs is None:
                self.labels[z] = 0
                self.slice_uncertainty[z] = 0.0
            else:
                self.labels[z] = lut[probs.argmax(0).cpu().numpy()]
                if left is None or right is None:
                    self.slice_uncertainty[z] = float(low_confidence(probs[None])[0])
            self.up_to_date[z] = True
            yield z, self.labels[z].copy()

    def _fuse(self, z: int, prob_fwd: torch.Tensor, prob_bwd: torch.Tensor, left: int,
              right: int) -> torch.Tensor:
        """:func:`fuse_directions`, recording how much the two directions disagree on ``z``
        (:attr:`slice_uncertainty`, and the pixel map when ``keep_disagreement_map``)."""
        labels_fwd, labels_bwd = prob_fwd.argmax(0), prob_bwd.argmax(0)
        self.slice_uncertainty[z] = float(label_disagreement(labels_fwd[None], labels_bwd[None])[0])
        if self._disagreement is not None:
            self._disagreement[z] = (labels_fwd != labels_bwd).cpu().numpy()
        return fuse_directions(prob_fwd, prob_bwd, z, left, right)

    def direction_disagreement_map(self) -> np.ndarray:
        """uint8 (D, H, W): 255 where the forward and backward passes disagreed (slices
        between two keys), 0 elsewhere. Needs ``Propagator(keep_disagreement_map=True)``."""
        if self._disagreement is None:
            raise ValueError("the session keeps no disagreement map; build the Propagator "
                             "with keep_disagreement_map=True")
        return self._disagreement.view(np.uint8) * np.uint8(255)

    @torch.inference_mode()
    def _pass(self, start: int, other: int | None,
              slices: range) -> Iterator[tuple[int, torch.Tensor]]:
        """One direction: from key ``start`` through ``slices`` (in order) with keys ``start``
        and ``other`` in memory. Yields (z, probabilities (L, H, W) float32), L = O + 1
        (per_object) or K (joint)."""
        net, every = self.net, self.propagator.memory_every
        bank = self.propagator.new_memory_bank()
        for key_z in (start, other):
            if key_z is not None:
                bank.add_key(key_z, self._features(key_z, slices).key[0], self._key_value(key_z))
        for step, z in enumerate(slices, start=1):
            features = self._features(z, slices)
            readout = net.read_memory(features.key, *bank.stacked(), net.config.top_k)
            probs = self.mode.probabilities(net, net.decode(features, readout))
            self.stats.decoded_slices += 1
            yield z, crop_to(probs[0], self.height, self.width)
            if step % every == 0 and step < len(slices):
                value = self._encode_value(z, features, self.mode.value_masks(probs))
                bank.add_recent(z, features.key[0], value)
                self.stats.peak_recent_frames = max(self.stats.peak_recent_frames,
                                                    len(bank.recent_frames))

    def _key_value(self, z: int) -> torch.Tensor:
        """Memory value of key slice ``z`` (cached): (O, Cv, h, w) for the current objects
        (per_object) or (1, Cv, h, w) (joint). The labels are padded (background) first."""
        if z not in self._key_values:
            labels = pad_to_multiple(torch.from_numpy(self.key_masks[z]).to(
                self.propagator.device), self.net.output_stride)
            masks = self.mode.key_masks(labels, self.object_ids).to(self.propagator.compute_dtype)
            self._key_values[z] = self._encode_value(z, self._features(z, [z]), masks)
        return self._key_values[z]

    def _encode_value(self, z: int, features: KeyFeatures, masks: torch.Tensor) -> torch.Tensor:
        self.stats.value_encodings += 1
        return self.net.encode_value(self._images([z]), features.f16, masks)[0]

    def _features(self, z: int, upcoming: range | list[int]) -> KeyFeatures:
        """Cached key features of slice ``z``; on a miss, encodes ``z`` and the next uncached
        slices of ``upcoming`` (up to ``key_batch_size``) in one batch."""
        if z not in self.features:
            order = list(upcoming)
            start = order.index(z) if z in order else 0
            batch = [z, *(s for s in order[start:] if s != z and s not in self.features)]
            batch = batch[:self.propagator.key_batch_size]
            with torch.inference_mode():
                encoded = self.net.encode_key(self._images(batch))
            self.stats.key_encoded_slices += len(batch)
            for i, s in enumerate(batch):
                self.features.put(s, encoded.index(slice(i, i + 1)))
        return self.features.get(z)

    def _images(self, slices: list[int]) -> torch.Tensor:
        """Slices (B, C, H', W') in [0, 1] on the device, padded to the network stride."""
        images = self.image[slices].to(self.propagator.device, self.propagator.compute_dtype)
        return pad_to_multiple(images / 255.0, self.net.output_stride)


def load_propagation_net(path: str | PathLike, device: str | torch.device = "cpu"
                         ) -> tuple[PropagationNet, tuple[Window, ...]]:
    """Rebuild the STCN network from a propagation checkpoint alone; returns it (eval mode, on
    ``device``) with the CT windows it was trained on."""
    payload, windows = load_with_windows(path, "propagation", "slicevos-train-propagation")
    model_config = from_dict(PropagationModelConfig, payload["config"]["model"], str(path))
    num_classes = payload["extra"].get("num_classes", model_config.num_classes)
    net = PropagationNet(dataclasses.replace(model_config, in_channels=len(windows),
                                             num_classes=num_classes))
    net.load_state_dict(payload["model"])
    return net.to(device).eval(), windows
