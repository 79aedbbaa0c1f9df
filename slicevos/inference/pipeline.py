"""Whole-volume segmentation: windowing -> [localizer] -> key slices -> propagation -> [component rules].

::

    pipeline = VolumePipeline.from_checkpoints("prop.pt", reference="ref.pt", localizer=None)
    pipeline = VolumePipeline.from_checkpoints(None, schema=FLARE22)   # flow engine, user keys
    result = pipeline.run(load_volume("ct.nii.gz"))              # automatic
    result = pipeline.run(volume, keys={40: mask40, 90: mask90})  # semi-automatic

Automatic mode: the reference pair segments every ``key_stride``-th slice of the (localized)
range; with ``key_mode: sampled`` every sampled slice becomes a key (empty ones too: they end
organs), with ``per_organ`` only the sampled slice where each organ is largest
(:func:`~slicevos.inference.reference.key_slices.select_key_slices`). Semi-automatic mode: the given
masks are the keys (canonical z) and come out exactly as given, post-processing included; the
localizer is not used. The propagation session fills every other slice of the range in both
directions; slices outside the localizer's range are background.

Per-slice uncertainty (``PipelineResult.slice_uncertainty``, (D,) float32, NaN outside the
processed range): on reference key slices the CPS disagreement of the two networks, 0 on user
keys, elsewhere the propagation session's direction disagreement (or, beyond the outermost
keys, its confidence proxy; see ``slicevos.inference.engines.stcn.engine``). All are fractions in
[0, 1] of the foreground pixels.

Memory: the windowed volume (D, C, H, W) uint8 and the labels (D, H, W) uint8 are the only
whole-volume arrays; probabilities exist for one slice (plus the forward pass of one segment,
float16) at a time; key features are kept for at most ``feature_cache_slices`` slices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from slicevos.errors import InputError, warn_input
from slicevos.inference.config import InferenceConfig
from slicevos.inference.engines import build_propagator
from slicevos.inference.localizer import Localizer, predict_z_range
from slicevos.inference.postprocess import clean_components
from slicevos.inference.reference.key_slices import select_key_slices
from slicevos.inference.reference.segmenter import ReferenceSegmenter
from slicevos.inference.reference.tta import FlipTTASegmenter
from slicevos.inference.suggestions import suggest_slices
from slicevos.io.labels import LabelSchema
from slicevos.io.volume import Volume
from slicevos.preprocessing.windowing import Window, window_volume

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECK_FIRST = 5  # slices the report lists to check first


@dataclass
class PipelineResult:
    """``labels`` uint8 (D, H, W) canonical; ``key_slices`` canonical z of the keys;
    ``key_source`` "reference" or "user"; ``organ_key_slice`` class id -> its key slice
    (automatic mode); ``z_range`` the processed half-open range; ``slice_uncertainty`` (D,)
    float32 (NaN: not processed); ``uncertainty_map`` uint8 (D, H, W) 255 where the two
    propagation directions disagree (only when asked for); ``slices_to_check`` canonical z,
    best first: with user keys, where a new key would remove the most expected error
    (:func:`~slicevos.inference.suggestions.suggest_slices`, the labeller's "check next"
    rule); with reference keys, empty (rank ``slice_uncertainty``: the keys are guesses too)."""

    labels: np.ndarray
    key_slices: list[int]
    key_source: str
    z_range: tuple[int, int]
    slice_uncertainty: np.ndarray
    organ_key_slice: dict[int, int] = field(default_factory=dict)
    uncertainty_map: np.ndarray | None = None
    slices_to_check: list[int] = field(default_factory=list)


def _no_timer(_stage: str) -> nullcontext:
    return nullcontext()


class VolumePipeline:
    """The automatic / semi-automatic segmentation of one volume (see module doc)."""

    def __init__(self, propagator: Any, propagation_windows: tuple[Window, ...],
                 schema: LabelSchema, reference: ReferenceSegmenter | None = None,
                 reference_windows: tuple[Window, ...] | None = None,
                 localizer: Localizer | None = None,
                 config: InferenceConfig | None = None) -> None:
        self.propagator, self.propagation_windows = propagator, propagation_windows
        self.schema, self.reference, self.localizer = schema, reference, localizer
        self.reference_windows = reference_windows or propagation_windows
        self.config = config or InferenceConfig()
        net = getattr(propagator, "model", None)
        if net is not None and net.joint and reference is not None and net.num_classes != schema.num_classes:
            raise InputError(None, f"the joint propagation model has {net.num_classes} classes "
                             f"but the reference model's schema {schema.name} has "
                             f"{schema.num_classes}", "use checkpoints trained on one schema")

    @classmethod
    def from_checkpoints(cls, propagation: str | PathLike | None,
                         reference: str | PathLike | None = None,
                         localizer: str | PathLike | None = None,
                         config: InferenceConfig | None = None, device: str = "cpu",
                         schema: LabelSchema | None = None,
                         keep_disagreement_map: bool = False) -> VolumePipeline:
        """Load (and check) every checkpoint before any work. The engine is
        ``config.propagator`` (``propagation`` is its checkpoint: none for flow). ``schema`` is
        needed without a reference checkpoint (semi-automatic only); otherwise the reference's
        schema is used. ``keep_disagreement_map``: results carry the direction-disagreement
        map."""
        config = config or InferenceConfig()
        amp = AMP_DTYPES[config.amp] if torch.device(device).type == "cuda" else None
        propagator = build_propagator(
            config.propagator, propagation, device, memory_every=config.memory_every,
            max_memory_frames=config.max_memory_frames, features_on_cpu=config.features_on_cpu,
            feature_cache_slices=config.feature_cache_slices,
            keep_disagreement_map=keep_disagreement_map, flow=config.flow,
            fusion=config.fusion, upsample_below=config.network_upsample_below)
        prop_windows = propagator.windows
        segmenter, ref_windows = None, None
        if reference is not None:
            segmenter = ReferenceSegmenter.from_checkpoint(reference, device, config.batch_size,
                                                           amp, config.backend)
            schema, ref_windows = segmenter.info.schema, segmenter.info.windows
        if schema is None:
            raise InputError(None, "no label schema: semi-automatic mode without a "
                             "reference checkpoint needs one", "pass --schema (e.g. flare22)")
        located = Localizer.from_checkpoint(localizer, device, amp_dtype=amp) if localizer else None
        return cls(propagator, prop_windows, schema, segmenter, ref_windows, located, config)

    @property
    def device(self) -> torch.device:
        return self.propagator.device

    def run(self, volume: Volume, keys: dict[int, np.ndarray] | None = None,
            timer: Callable[[str], AbstractContextManager] = _no_timer,
            progress: bool = False) -> PipelineResult:
        """Segment ``volume``; ``keys`` {canonical z: (H, W) labels} switches to semi-automatic
        mode. ``timer(stage)`` is a context manager factory (e.g. ``report.StageTimer``)."""
        depth = volume.num_slices
        if keys is None and self.reference is None:
            raise InputError(None, "automatic mode needs a reference checkpoint",
                             "pass --reference, or key slices with --keys")
        with timer("window"):
            image = window_volume(volume.hu, self.propagation_windows)
            ref_image = (image if self.reference_windows == self.propagation_windows
                         or keys is not None else window_volume(volume.hu,
                                                                self.reference_windows))
        low, high = 0, depth
        if keys is None and self.localizer is not None:
            with timer("localizer"):
                low, high = self._localize(volume, ref_image)
        uncertainty = np.full(depth, np.nan, np.float32)
        organ_key_slice: dict[int, int] = {}
        if keys is None:
            self.reference.input_spacing = tuple(volume.spacing[1:])
            with timer("reference"), self._autocast():
                keys, organ_key_slice = self._reference_keys(ref_image, low, high, uncertainty)
            source = "reference"
        else:
            source = "user"
            self._check_user_keys(keys, volume)
            for z in keys:
                uncertainty[z] = 0.0
        labels = np.zeros(volume.shape, np.uint8)
        keep_map = self.propagator.keep_disagreement_map
        disagreement = np.zeros(volume.shape, np.uint8) if keep_map else None
        to_check: list[int] = []
        if keys:
            with timer("propagation"), self._autocast():
                session = self.propagator.start(image[low:high])
                for z, mask in keys.items():
                    session.add_mask(z - low, mask)
                for _ in self._progress(session, progress):
                    pass
                labels[low:high] = session.labels
                propagated = session.slice_uncertainty
                unset = np.isnan(uncertainty[low:high])
                uncertainty[low:high][unset] = propagated[unset]
                if disagreement is not None:
                    disagreement[low:high] = session.direction_disagreement_map()
                if source == "user":
                    to_check = [low + z for z in suggest_slices(session, k=CHECK_FIRST)]
        else:
            warn_input(volume.path, "no organ found on any sampled slice; the output is empty",
                       "check the input is an abdominal CT, or lower inference.min_key_area")
        if self.config.component_rules:
            with timer("postprocess"):
                drawn = keys if source == "user" else None
                labels = clean_components(labels, self.schema, drawn)
                for z, mask in (drawn or {}).items():
                    labels[z] = mask
        return PipelineResult(labels, sorted(int(z) for z in keys), source, (low, high),
                              uncertainty, organ_key_slice, disagreement, to_check)

    def _localize(self, volume: Volume, ref_image: np.ndarray) -> tuple[int, int]:
        cfg = self.config
        scores = self.localizer.slice_scores_hu(volume.hu, stride=cfg.localizer_stride)
        found = predict_z_range(scores, cfg.localizer_threshold, cfg.localizer_margin_slices)
        if found is None:
            warn_input(volume.path, "the localizer found no abdomen slice; segmenting the whole "
                       "volume", "check the scan, or run without --localizer")
            return 0, volume.num_slices
        return found

    def _reference_keys(self, ref_image: np.ndarray, low: int, high: int,
                        uncertainty: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, int]]:
        """Key masks {canonical z: labels} chosen by the reference pair in [low, high); writes
        the CPS disagreement of the key slices into ``uncertainty``."""
        segmenter = FlipTTASegmenter(self.reference, self.schema, self.config.tta)
        found = select_key_slices(ref_image[low:high], segmenter, self.schema.num_classes,
                                  self.config.key_stride, min_area=self.config.min_key_area,
                                  z_offset=low, full_depth=len(ref_image))
        if self.config.key_mode == "sampled" and not found.empty:
            indices, masks = found.sampled, found.sampled_masks
        else:
            indices, masks = found.indices, found.masks
        rows = np.searchsorted(found.sampled, indices)
        for z, row in zip(indices, rows, strict=True):
            uncertainty[low + z] = segmenter.last.disagreement[row]
        keys = {int(low + z): mask for z, mask in zip(indices, masks, strict=True)}
        return keys, {c: int(low + z) for c, z in found.organ_slice.items()}

    def _check_user_keys(self, keys: dict[int, np.ndarray], volume: Volume) -> None:
        for z, mask in keys.items():
            if not 0 <= z < volume.num_slices or mask.shape != volume.shape[1:]:
                raise InputError(volume.path, f"key slice {z} {mask.shape} does not fit the "
                                 f"volume {volume.shape}", "pass (H, W) masks of slices "
                                 f"0..{volume.num_slices - 1}")
            bad = np.setdiff1d(np.unique(mask), (0, *self.schema.ids))
            if len(bad) and self.schema.name != "objects":
                raise InputError(volume.path, f"key slice {z} holds label ids {bad.tolist()} "
                                 f"that schema {self.schema.name} does not have",
                                 "convert the key labels to the schema (slicevos-convert-labels)")

    @contextmanager
    def _autocast(self) -> Iterator[None]:
        dtype = AMP_DTYPES[self.config.amp] if self.device.type == "cuda" else None
        with torch.autocast(self.device.type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            yield

    @staticmethod
    def _progress(session, enabled: bool):
        todo = int((~session.up_to_date).sum())
        return tqdm(session.propagate(), total=todo, desc="propagation", unit="slice",
                    disable=not enabled, leave=False)
