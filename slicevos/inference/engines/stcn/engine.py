"""The STCN engine of the propagation session (``slicevos.inference.session``): SAM2 / Cutie
style memory propagation with the trained network.

::

    propagator = Propagator(net, device="cuda")
    session = propagator.start(image)          # windowed uint8 volume (D, C, H, W)
    session.add_mask(40, labels_40)
    labels = session.run()                     # (D, H, W) uint8

Object modes: the network's ``object_mode`` picks the strategy of
``slicevos.inference.engines.stcn.object_modes`` (per_object: one value per object, background + objects
probabilities; joint: one value per slice from the one-hot class mask, class probabilities,
argmax = class id, key labels < K, cost independent of the object count).

Each pass keeps BOTH keys of its segment in memory for the whole pass (plus its own recent
frames, every ``memory_every`` slices, at most ``max_memory_frames``), so no pass ever sees
only one key. Scores are probabilities; beyond the outermost keys the slice uncertainty is 1 -
the mean top probability over the predicted foreground.

Key-encoder features are computed once per slice and cached (:class:`FeatureCache`, full by
default, LRU with ``feature_cache_slices``; ``feature_dtype`` / ``features_on_cpu`` set how
they are stored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from os import PathLike

import numpy as np
import torch

from slicevos.config import from_dict
from slicevos.errors import InputError
from slicevos.inference.box_scores import Box
from slicevos.inference.checkpoints import load_with_windows
from slicevos.inference.engines.stcn.memory_bank import FeatureCache, MemoryBank
from slicevos.inference.engines.stcn.object_modes import object_mode
from slicevos.inference.engines.stcn.slice_scale import SliceScaler, upsample_factor
from slicevos.inference.session import (
    PassEngine,
    PassOutput,
    PropagationSession,
    SessionStats,
    fuse_directions,
)
from slicevos.models.propagation import KeyFeatures, PropagationModelConfig, PropagationNet
from slicevos.preprocessing.windowing import Window

__all__ = ["Propagator", "PropagationSession", "SessionStats", "StcnPasses", "fuse_directions",
           "load_propagation_net"]


class Propagator:
    """Builds :class:`PropagationSession` objects driven by one STCN network, per_object or
    joint (the model is moved to ``device`` and set to eval mode).

    ``memory_every``: a pass adds its current slice to the memory every that many slices;
    ``max_memory_frames``: non-key frames a pass keeps (oldest dropped); ``feature_dtype``:
    storage dtype of cached features and memory (float16 halves memory, computation runs in
    the model's dtype); ``features_on_cpu``: keep them on the CPU (long volumes);
    ``feature_cache_slices``: None = cache every slice, else an LRU of that many;
    ``key_batch_size``: slices key-encoded per network call; ``upsample_below``: slices whose
    longer side is under that many pixels run on a grid up to twice as fine
    (``slicevos.inference.engines.stcn.slice_scale``; 0 = never); ``keep_disagreement_map``:
    sessions keep a (D, H, W) bool map of where the two directions disagree; ``windows``: the
    CT windows the network was trained on (from its checkpoint), for callers that window.
    """

    name = "stcn"

    def __init__(self, model: PropagationNet, device: torch.device | str = "cpu",
                 memory_every: int = 5, max_memory_frames: int = 8,
                 feature_dtype: torch.dtype = torch.float16, features_on_cpu: bool = False,
                 feature_cache_slices: int | None = None, key_batch_size: int = 8,
                 keep_disagreement_map: bool = False,
                 windows: tuple[Window, ...] | None = None, upsample_below: int = 0) -> None:
        if memory_every < 1 or max_memory_frames < 0 or key_batch_size < 1 or upsample_below < 0:
            raise ValueError(f"need memory_every >= 1, max_memory_frames >= 0, key_batch_size "
                             f">= 1, upsample_below >= 0, got {memory_every}, "
                             f"{max_memory_frames}, {key_batch_size}, {upsample_below}")
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
        self.windows = windows
        self.upsample_below = upsample_below

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    def check_image(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``image`` as a CPU uint8 tensor (D, C, H, W), or InputError."""
        image = torch.as_tensor(image)
        if image.ndim != 4 or image.dtype != torch.uint8 or image.shape[0] < 1 \
                or image.shape[1] != self.in_channels:
            raise InputError(None, f"{type(self).__name__}.start expects a uint8 volume (D, "
                             f"C={self.in_channels}, H, W), got {image.dtype} "
                             f"{tuple(image.shape)}", "pass window_volume(hu) of the scan")
        return image.cpu()

    def start(self, image: np.ndarray | torch.Tensor) -> PropagationSession:
        """A session on ``image``: the windowed uint8 volume (D, C, H, W)."""
        return PropagationSession(self.check_image(image), self.engine,
                                  self.keep_disagreement_map)

    def engine(self, session: PropagationSession) -> StcnPasses:
        """The STCN pass engine of ``session``."""
        return StcnPasses(self, session)

    def new_memory_bank(self) -> MemoryBank:
        return MemoryBank(self.max_memory_frames, self.device, self.compute_dtype,
                          self.feature_dtype, self.storage_device)


class StcnPasses(PassEngine):
    """STCN passes of one session: cached key features and key values (see the module doc)."""

    def __init__(self, propagator: Propagator, session: PropagationSession) -> None:
        self.propagator = propagator
        self.session = session
        self.net = propagator.model
        self.mode = propagator.mode
        self.features = FeatureCache(propagator.device, propagator.compute_dtype,
                                     propagator.feature_dtype, propagator.storage_device,
                                     propagator.feature_cache_slices)
        self._key_values: dict[int, torch.Tensor] = {}  # z -> (O or 1, Cv, h, w)
        factor = upsample_factor(session.height, session.width, propagator.upsample_below)
        self.scale = SliceScaler(session.height, session.width, factor, self.net.output_stride)

    def check_key(self, z: int, labels: np.ndarray) -> None:
        self.mode.check_key(z, labels)

    def keys_changed(self, z: int, objects_changed: bool) -> tuple[int, int]:
        self._key_values.pop(z, None)
        if objects_changed and self.mode.values_depend_on_objects:
            self._key_values.clear()
        return 0, 0

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        return self.mode.label_lut(object_ids)

    def pixel_doubt(self, output: PassOutput, box: Box) -> np.ndarray:
        return (1.0 - output.scores[:, box[0], box[1]].max(0).values).float().cpu().numpy()

    @torch.inference_mode()
    def run_pass(self, start: int, other: int | None, slices: range,
                 prior: Callable[[int], torch.Tensor] | None = None, prior_floor: float = 0.0
                 ) -> Iterator[tuple[int, PassOutput]]:
        """Keys ``start`` and ``other`` in memory; probabilities (L, H, W) float32, L = O + 1
        (per_object) or K (joint), on the session's grid whatever grid the network runs on
        (``self.scale``). ``prior(z)``: the flow prior of slice ``z`` for a flow-guided
        network, (O or K, H, W) signed distances in pixels, ``prior_floor`` meaning far
        outside (asked once per slice, in pass order, before the slice is decoded); its
        passes score in the prior's units instead (:meth:`_distance_scores`), so that the
        session mixes the two directions as it mixes the flow engine's."""
        net, every, stats = self.net, self.propagator.memory_every, self.session.stats
        bank = self.propagator.new_memory_bank()
        for key_z in (start, other):
            if key_z is not None:
                bank.add_key(key_z, self._features(key_z, slices).key[0], self._key_value(key_z))
        for step, z in enumerate(slices, start=1):
            features = self._features(z, slices)
            readout = net.read_memory(features.key, *bank.stacked(), net.config.top_k)
            decoded = (net.decode(features, readout) if prior is None
                       else net.decode(features, readout, self.scale.prior(
                           prior(z).to(self.propagator.device), prior_floor).to(
                           self.propagator.compute_dtype)[None]))
            probs = self.mode.probabilities(net, decoded)
            scores = probs[0] if prior is None else self._distance_scores(decoded[0])
            yield z, PassOutput(self.scale.scores(scores, distances=prior is not None))
            if step % every == 0 and step < len(slices):
                value = self._encode_value(z, features, self.mode.value_masks(probs))
                bank.add_recent(z, features.key[0], value)
                stats.peak_recent_frames = max(stats.peak_recent_frames, len(bank.recent_frames))

    def _distance_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """A flow-guided network's logits (O or K, H, W) -> scores in pixels of signed
        distance, the flow engine's units: [background 0, objects] (per_object) or the K
        class scores (joint), times ``prior_temperature``."""
        scale = self.net.config.prior_temperature
        if not self.net.joint:
            logits = torch.cat([torch.zeros_like(logits[:1]), logits])
        return logits.float() * scale


    def _key_value(self, z: int) -> torch.Tensor:
        """Memory value of key slice ``z`` (cached): (O, Cv, h, w) for the current objects
        (per_object) or (1, Cv, h, w) (joint). The labels are padded (background) first."""
        if z not in self._key_values:
            labels = self.scale.labels(torch.from_numpy(self.session.key_masks[z]).to(
                self.propagator.device))
            masks = self.mode.key_masks(labels, self.session.object_ids).to(
                self.propagator.compute_dtype)
            self._key_values[z] = self._encode_value(z, self._features(z, [z]), masks)
        return self._key_values[z]

    def _encode_value(self, z: int, features: KeyFeatures, masks: torch.Tensor) -> torch.Tensor:
        self.session.stats.add("value_encodings")
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
            self.session.stats.add("key_encoded_slices", len(batch))
            for i, s in enumerate(batch):
                self.features.put(s, encoded.index(slice(i, i + 1)))
        return self.features.get(z)

    def _images(self, slices: list[int]) -> torch.Tensor:
        """Slices (B, C, H'', W'') in [0, 1] on the device, on the network's grid."""
        images = self.session.image[slices].to(self.propagator.device,
                                               self.propagator.compute_dtype)
        return self.scale.images(images / 255.0)


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
