"""Training clips of slices from the slice cache, for the propagation module.

``ClipData(config, rank)`` splits the cache's labeled cases into train and validation and draws
batches of clips: ``batch(step)`` from the training cases (augmented, gap curriculum),
``val_batch(index)`` from the validation cases (no augmentation, ``max_gap_end``). Which slices
and objects a clip holds is decided in ``slicevos.data.clip_sampling``; every clip is a pure
function of (seed, rank, step, i). ``loader(start_step)`` yields the identical batches from
``DataLoader`` worker processes.

Per clip: read the T slices, augment every frame with the same seed (the same geometric
transform for the whole clip), crop all frames with one window centred on a pixel of one of
the chosen objects in frame 0 (or pad with 0), then one binary mask per object and frame, and
the cropped label map itself (for joint, all-classes training).
Objects left with fewer than ``min_object_pixels`` pixels in frame 0 after augmentation and
crop are dropped; when none is left the clip is augmented again with the next seed, and the
last attempt goes without augmentation (keeping any object with a pixel in frame 0).
Label ids are read from ``labels.npy`` as they are: any id > 0 is an object, whatever schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from slicevos.config import check_fields
from slicevos.data.augment import AugmentedDataset, augment_slice
from slicevos.data.batch import TensorBatch
from slicevos.data.cache import INDEX_FILE, SliceCache, class_areas
from slicevos.data.clip_sampling import (
    CLIP_STREAM,
    VAL_CLIP_STREAM,
    ClipKey,
    ClipSampler,
    curriculum_max_gap,
)
from slicevos.data.flow_prior import clip_flow_prior
from slicevos.data.optical_flow import FlowSettings
from slicevos.data.sampling import (
    SEED_BOUND,
    case_weight_factors,
    crop_or_pad,
    foreground_center,
    split_cases,
)
from slicevos.data.slices import StepBatchSampler
from slicevos.errors import InputError
from slicevos.preprocessing.position import relative_position

LABEL_SOURCES = ("labels",)
LABEL_CLASSES = ("all", "objects")
PRIOR_PATHS = ("adjacent", "frames")
AUGMENT_ATTEMPTS = 4  # the last one without augmentation


@dataclass(frozen=True)
class ClipDataConfig:
    """How clips are drawn (YAML: the ``data:`` section of a propagation config).

    ``clip_length`` T frames, ``min_gap``..max gap slices apart, the max gap growing linearly
    from ``max_gap_start`` to ``max_gap_end`` over ``gap_curriculum_iterations`` steps.
    ``max_objects`` objects per clip (1.. of them drawn); an object needs ``min_object_pixels``
    pixels in frame 0. ``crop_size`` (h, w): a multiple of the network's output stride.
    ``augment``: path / spec of ``slicevos.data.augment``. ``label_source``: "labels" (the
    cache's labels.npy; any id > 0 is an object). ``label_classes``: what a clip's ``labels``
    (joint-mode input and targets) hold: every class of the frames ("all") or only the clip's
    sampled objects, other ids set to 0 ("objects": joint training then has to follow the
    classes its key gives instead of segmenting every class it knows). ``flow_prior``: each
    clip also carries frame 0's masks warped onto the later frames by optical flow
    (``slicevos.data.flow_prior``; signed distances clipped to ``±prior_clip`` pixels), the
    input of a flow-guided STCN; the training config sets it from ``model.prior_input``.
    ``prior_through``: "adjacent" composes the flows between every pair of adjacent slices
    from frame 0 on (as the flow engine does), "frames" only those between the clip's frames
    (cheaper, and worse across long gaps). ``case_weights``: glob of case ids -> how much
    likelier their slices start a training clip (e.g. ``{"phantom_*": 0.3}`` to mix a few
    phantoms into real tracks; unmatched cases 1; ``sampling.case_weight_factors``).
    """

    cache_dir: str
    clip_length: int = 3
    crop_size: tuple[int, int] = (384, 384)
    batch_size: int = 8
    max_objects: int = 2
    min_gap: int = 1
    max_gap_start: int = 1
    max_gap_end: int = 25
    gap_curriculum_iterations: int = 10_000
    reverse_probability: float = 0.5
    augment: str | tuple[dict[str, Any], ...] | dict[str, Any] | None = None
    min_object_pixels: int = 100
    case_weights: dict[str, float] | None = None
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.0
    label_source: str = "labels"
    label_classes: str = "all"
    flow_prior: bool = False
    prior_clip: float = 24.0
    prior_through: str = "adjacent"
    workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.augment, list):
            object.__setattr__(self, "augment", tuple(self.augment))
        checks = {
            "clip_length": (self.clip_length >= 2, "an integer >= 2"),
            "crop_size": (len(self.crop_size) == 2 and min(self.crop_size) > 0,
                          "two positive integers (height, width)"),
            "batch_size": (self.batch_size >= 1, "a positive integer"),
            "max_objects": (self.max_objects >= 1, "a positive integer"),
            "min_gap": (self.min_gap >= 1, "an integer >= 1"),
            "max_gap_start": (self.max_gap_start >= self.min_gap, "an integer >= data.min_gap"),
            "max_gap_end": (self.max_gap_end >= self.min_gap, "an integer >= data.min_gap"),
            "gap_curriculum_iterations": (self.gap_curriculum_iterations >= 0, "an integer >= 0"),
            "reverse_probability": (0 <= self.reverse_probability <= 1, "a probability in [0, 1]"),
            "min_object_pixels": (self.min_object_pixels >= 1, "a positive integer"),
            "val_fraction": (0 <= self.val_fraction < 1, "a fraction in [0, 1)"),
            "label_source": (self.label_source in LABEL_SOURCES, f"one of {LABEL_SOURCES}"),
            "label_classes": (self.label_classes in LABEL_CLASSES, f"one of {LABEL_CLASSES}"),
            "prior_clip": (self.prior_clip > 0, "a number of pixels > 0"),
            "prior_through": (self.prior_through in PRIOR_PATHS, f"one of {PRIOR_PATHS}"),
            "workers": (self.workers >= 0, "an integer >= 0"),
            "seed": (self.seed >= 0, "an integer >= 0"),
        }
        check_fields(self, "data", checks)

    def max_gap(self, step: int) -> int:
        """Largest slice gap between consecutive frames of the clips of training step ``step``."""
        return curriculum_max_gap(step, self.max_gap_start, self.max_gap_end,
                                  self.gap_curriculum_iterations)


@dataclass
class ClipBatch(TensorBatch):
    """A batch of clips (B clips, T frames, O object slots).

    ``images`` float32 (B, T, C, H, W) in [0, 1]; ``masks`` float32 (B, T, O, H, W), 1 where
    object slot o covers the pixel (objects never overlap; padding slots are all 0);
    ``object_ids`` int64 (B, O) the objects' label ids, 0 for padding; ``valid`` bool (B, O)
    real objects (slot 0 of every clip is valid; an object of ``keys[b].object_ids`` that the
    crop left with too few pixels in frame 0 is dropped here); ``frames`` int64 (B, T) slice
    indices, frame 0 the one whose masks are given; ``positions`` float32 (B, T) z / (D - 1);
    ``labels`` int64 (B, T, H, W) the cropped frames' label ids as stored in the cache (every
    class, or only the objects with ``label_classes="objects"``; 0 background and padding),
    for joint-mode training;
    ``keys`` the ``ClipKey`` of each clip; ``priors`` float32 (B, T-1, O, H, W) the flow
    prior of frames 1..T-1 (signed distances in pixels, ``-prior_clip`` for padding slots),
    or None when the data has no ``flow_prior``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    object_ids: torch.Tensor
    valid: torch.Tensor
    frames: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor
    keys: tuple[ClipKey, ...] = field(default=(), compare=False)
    priors: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def targets(self) -> torch.Tensor:
        """int64 (B, T, H, W): 0 background, o + 1 where object slot o is (the class ids of
        aggregated logits with K = O + 1 channels)."""
        slots = torch.arange(1, self.masks.shape[2] + 1, device=self.masks.device)
        return (self.masks.long() * slots[None, None, :, None, None]).sum(2)


def collate_clips(samples: Sequence[Mapping[str, Any]]) -> ClipBatch:
    """Stack ``ClipDataset`` samples into a ``ClipBatch``."""
    return ClipBatch(**{name: torch.stack([s[name] for s in samples]) for name in
                        ("images", "masks", "object_ids", "valid", "frames", "positions",
                         "labels")},
                     keys=tuple(s["key"] for s in samples),
                     priors=(torch.stack([s["priors"] for s in samples])
                             if "priors" in samples[0] else None))


class ClipDataset(AugmentedDataset):
    """Clips of one sampler: ``dataset[(step, i)]`` or ``dataset[ClipKey]`` -> dict with
    ``images`` (T, C, h, w), ``masks`` (T, O, h, w), ``object_ids`` (O,), ``valid`` (O,),
    ``frames`` (T,), ``positions`` (T,), ``labels`` (T, h, w) int64, ``key``, and with
    ``flow_prior`` ``priors`` (T-1, O, h, w). Picklable (for
    ``DataLoader`` workers)."""

    def __init__(self, cache: SliceCache, config: ClipDataConfig, sampler: ClipSampler,
                 rank: int = 0, augment: bool = True) -> None:
        self.cache, self.config, self.sampler, self.rank = cache, config, sampler, rank
        self.augment = augment
        self._init_augmentation()

    def __len__(self) -> int:
        """Number of first slices clips start from (samples are keyed, not indexed)."""
        return self.sampler.num_first_slices

    def key(self, step: int, i: int) -> ClipKey:
        return self.sampler.key(self.config.seed, self.rank, step, i)

    def _slices(self, key: ClipKey) -> list[int]:
        """The slices a clip reads: its frames, or with ``flow_prior`` through "adjacent"
        every slice from frame 0 to the last frame (the prior is composed through them)."""
        if not self.config.flow_prior or self.config.prior_through == "frames":
            return list(key.frames)
        first, last = key.frames[0], key.frames[-1]
        step = 1 if last >= first else -1
        return list(range(first, last + step, step))

    def _attempt(self, key: ClipKey, slices: Sequence[int], pipeline: Any, seed: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment every slice of ``slices`` (:meth:`_slices`) with ``seed`` and crop them all
        with one window: image uint8 (S, C, h, w) and labels uint8 (S, h, w)."""
        frames = [augment_slice(pipeline, *self.cache.slice(key.case_id, z), seed)
                  for z in slices]
        first = frames[0][1]
        center = foreground_center(np.where(np.isin(first, key.object_ids), first, 0), rng)
        channels = frames[0][0].shape[0]
        stacked = np.concatenate([np.concatenate([img, lab[None]]) for img, lab in frames])
        stacked, _ = crop_or_pad(stacked, None, self.config.crop_size, center, rng)
        stacked = stacked.reshape(len(frames), channels + 1, *stacked.shape[1:])
        return stacked[:, :channels], stacked[:, channels]

    def __getitem__(self, key: ClipKey | tuple[int, int]) -> dict[str, Any]:
        if not isinstance(key, ClipKey):
            key = self.key(*key)
        rng = np.random.default_rng(key.seed)
        slices = self._slices(key)
        at = [slices.index(z) for z in key.frames]  # the frames' rows of the slices read
        for attempt in range(AUGMENT_ATTEMPTS):
            pipeline = self._pipeline if attempt < AUGMENT_ATTEMPTS - 1 else None
            path, path_labels = self._attempt(key, slices, pipeline,
                                              int(rng.integers(SEED_BOUND)), rng)
            image, labels = path[at], path_labels[at]
            areas = {k: int((labels[0] == k).sum()) for k in key.object_ids}
            kept = [k for k in key.object_ids if areas[k] >= self.config.min_object_pixels]
            if kept:
                break
            if pipeline is None:  # unaugmented: the crop is centred on an object pixel
                kept = [k for k in key.object_ids if areas[k] > 0]
                break
        slots = np.zeros(self.config.max_objects, dtype=np.int64)
        slots[:len(kept)] = kept
        masks = (labels[:, None] == slots[None, :, None, None]) & (slots > 0)[None, :, None, None]
        if self.config.label_classes == "objects":
            labels = np.where(np.isin(labels, slots[slots > 0]), labels, 0)
        depth = self.cache.num_slices(key.case_id)
        sample = {
            "images": torch.from_numpy(image.astype(np.float32) / 255),
            "masks": torch.from_numpy(masks.astype(np.float32)),
            "object_ids": torch.from_numpy(slots),
            "valid": torch.from_numpy(slots > 0),
            "frames": torch.tensor(key.frames, dtype=torch.int64),
            "positions": torch.from_numpy(relative_position(np.array(key.frames), depth)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "key": key,
        }
        if self.config.flow_prior:
            sample["priors"] = torch.from_numpy(clip_flow_prior(
                path, masks[0], FlowSettings(), self.config.prior_clip, at[1:]))
        return sample


class ClipData:
    """Train / validation split of a slice cache and deterministic batches of clips."""

    def __init__(self, config: ClipDataConfig, rank: int = 0) -> None:
        self.config, self.rank = config, rank
        self.cache = SliceCache(config.cache_dir)
        self.train_cases, self.val_cases = split_cases(self.cache, config.val_cases,
                                                       config.val_fraction, config.seed)
        self.train_dataset = self._dataset(CLIP_STREAM, self.train_cases, config.max_gap, True)
        self.val_dataset = (self._dataset(VAL_CLIP_STREAM, self.val_cases,
                                          partial(curriculum_max_gap, start=config.max_gap_end,
                                                  end=config.max_gap_end, iterations=0),
                                          False)
                            if self.val_cases else None)

    def _areas(self, case_id: str) -> np.ndarray:
        areas = self.cache.class_areas(case_id)
        if areas is None:
            labels = self.cache.labels(case_id)
            areas = class_areas(np.asarray(labels), int(labels.max()) + 1)
        return np.asarray(areas)

    def _dataset(self, stream_id: int, cases: Sequence[str], max_gap: Callable[[int], int],
                 augment: bool) -> ClipDataset:
        c = self.config
        factors = case_weight_factors(cases, c.case_weights) if augment else None
        sampler = ClipSampler(stream_id, cases, [self._areas(k) for k in cases], c.clip_length,
                              c.min_gap, c.max_objects, c.min_object_pixels,
                              c.reverse_probability, max_gap, factors)
        if sampler.num_first_slices == 0:
            raise InputError(self.cache.root / INDEX_FILE, f"no slice of cases {list(cases)[:8]} "
                             f"holds an object of >= {c.min_object_pixels} pixels with room for "
                             f"{c.clip_length} frames {c.min_gap} slice(s) apart",
                             "lower data.min_object_pixels, data.clip_length or data.min_gap, "
                             "or add labeled cases")
        return ClipDataset(self.cache, c, sampler, self.rank, augment)

    @property
    def in_channels(self) -> int:
        """Number of CT windows (image channels) in the cache."""
        return len(self.cache.windows)

    def batch(self, step: int) -> ClipBatch:
        """Training batch ``step``, built in this process."""
        return collate_clips([self.train_dataset[(step, i)]
                              for i in range(self.config.batch_size)])

    def val_batch(self, index: int, batch_size: int | None = None) -> ClipBatch:
        """Validation batch ``index`` (the same for every run with this seed): clips of the
        validation cases, no augmentation, gaps up to ``max_gap_end``. Rank-independent."""
        if self.val_dataset is None:
            raise InputError(None, "no validation cases to draw clips from",
                             "set data.val_cases or data.val_fraction")
        size = self.config.batch_size if batch_size is None else batch_size
        return collate_clips([self.val_dataset[self.val_dataset.sampler.key(
            self.config.seed, 0, index, i)] for i in range(size)])

    def loader(self, start_step: int = 0, stop_step: int | None = None,
               workers: int | None = None, pin_memory: bool = False) -> DataLoader:
        """A ``DataLoader`` yielding ``batch(step)`` for step = start_step, start_step + 1, ...
        (endless unless ``stop_step``), built in ``workers`` processes (default
        ``config.workers``; 0 = this process)."""
        workers = self.config.workers if workers is None else workers
        return DataLoader(self.train_dataset,
                          batch_sampler=StepBatchSampler(self.config.batch_size, start_step,
                                                         stop_step),
                          num_workers=workers, collate_fn=collate_clips, pin_memory=pin_memory,
                          persistent_workers=workers > 0)
