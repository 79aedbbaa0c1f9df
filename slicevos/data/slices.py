"""Training batches of 2D slices from the slice cache, for the reference (CPS) module.

``SliceData(config, schema, rank)`` splits the cache's labeled cases into train and validation
and draws batches: ``labeled_batch(step)`` from the training cases' labeled slices,
``unlabeled_batch(step)`` from the unlabeled cases (and the training cases' images when
``unlabeled_from_labeled``). Every sample is a pure function of (seed, rank, step, i), see
``slicevos.data.sampling``. For worker processes, ``loader(kind, start_step)`` wraps the same
``SliceDataset`` in a torch ``DataLoader`` and yields the identical batches.

Per sample: read slice z (uint8 (C, H, W) windows, uint8 (H, W) labels), augment at native
size, crop to ``crop_size`` (centred on a foreground pixel with probability
``foreground_bias``) or pad with 0, then image / 255 as float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from slicevos.config import check_fields
from slicevos.data.augment import AugmentedDataset, augment_slice
from slicevos.data.batch import TensorBatch
from slicevos.data.cache import INDEX_FILE, SliceCache
from slicevos.data.sampling import (
    LABELED_STREAM,
    SEED_BOUND,
    UNLABELED_STREAM,
    SampleKey,
    SliceStream,
    case_weight_factors,
    crop_or_pad,
    foreground_center,
    split_cases,
    to_spacing,
)
from slicevos.errors import InputError
from slicevos.io.labels import LabelSchema, get_schema
from slicevos.preprocessing.position import relative_position

KINDS = ("labeled", "unlabeled")


@dataclass(frozen=True)
class SliceDataConfig:
    """Where slices come from and how batches are drawn (YAML: the ``data:`` section).

    ``crop_size`` (h, w) should be a multiple of the networks' output stride. ``augment``: the
    path of an augmentation YAML, or its list of transforms (``slicevos.data.augment``), or None.
    ``val_cases`` (ids) or ``val_fraction`` hold labeled cases out for validation.
    ``foreground_slice_weight``: how much likelier a labeled slice holding any foreground class
    is drawn than one without (1 = uniform over slices). ``case_weights``: glob of case ids
    -> weight of each of their labeled slices (e.g. ``{"h_*": 0.5}``; unmatched cases 1;
    ``slicevos.data.sampling.case_weight_factors``). ``spacing_mm``: resample every slice to
    this in-plane pixel size (mm) before augmentation, so scans of any resolution show organs
    at one scale; the checkpoint keeps it and inference resamples the same way (None: as is).
    """

    cache_dir: str
    crop_size: tuple[int, int] = (512, 512)
    batch_labeled: int = 2
    batch_unlabeled: int = 2
    foreground_bias: float = 0.5
    foreground_slice_weight: float = 1.0
    case_weights: dict[str, float] | None = None
    augment: str | tuple[dict[str, Any], ...] | dict[str, Any] | None = None
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.0
    unlabeled_from_labeled: bool = False
    workers: int = 0
    seed: int = 0
    spacing_mm: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.augment, list):
            object.__setattr__(self, "augment", tuple(self.augment))
        checks = {
            "crop_size": (len(self.crop_size) == 2 and min(self.crop_size) > 0,
                          "two positive integers (height, width)"),
            "batch_labeled": (self.batch_labeled >= 1, "a positive integer"),
            "batch_unlabeled": (self.batch_unlabeled >= 0, "an integer >= 0"),
            "foreground_bias": (0 <= self.foreground_bias <= 1, "a probability in [0, 1]"),
            "foreground_slice_weight": (self.foreground_slice_weight > 0, "a positive number"),
            "val_fraction": (0 <= self.val_fraction < 1, "a fraction in [0, 1)"),
            "workers": (self.workers >= 0, "an integer >= 0"),
            "seed": (self.seed >= 0, "an integer >= 0"),
            "spacing_mm": (self.spacing_mm is None or self.spacing_mm > 0,
                           "a positive pixel size in mm, or null"),
        }
        check_fields(self, "data", checks)


@dataclass
class SliceBatch(TensorBatch):
    """A batch of slices. ``image`` float32 (B, C, H, W) in [0, 1]; ``target`` int64 (B, H, W)
    class ids, None for unlabeled batches; ``position`` float32 (B,) z / (D - 1);
    ``annotated`` bool (B, K) classes drawn in each sample (background True), None for
    unlabeled batches; ``keys`` the samples' ``SampleKey`` (which case and slice)."""

    image: torch.Tensor
    target: torch.Tensor | None
    position: torch.Tensor
    annotated: torch.Tensor | None
    keys: tuple[SampleKey, ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return self.image.shape[0]



def annotated_mask(meta: Mapping[str, Any], num_classes: int) -> np.ndarray:
    """bool (K,): True for background and the classes of ``meta["annotated_class_ids"]``."""
    mask = np.zeros(num_classes, dtype=bool)
    mask[0] = True
    mask[list(meta.get("annotated_class_ids") or [])] = True
    return mask


def collate_slices(samples: Sequence[Mapping[str, Any]]) -> SliceBatch:
    """Stack ``SliceDataset`` samples into a ``SliceBatch``."""
    labeled = samples[0]["target"] is not None
    return SliceBatch(
        image=torch.stack([s["image"] for s in samples]),
        target=torch.stack([s["target"] for s in samples]) if labeled else None,
        position=torch.tensor([s["position"] for s in samples], dtype=torch.float32),
        annotated=torch.stack([s["annotated"] for s in samples]) if labeled else None,
        keys=tuple(s["key"] for s in samples),
    )


class SliceDataset(AugmentedDataset):
    """Samples of one stream: ``dataset[(step, i)]`` or ``dataset[SampleKey]`` -> dict with
    ``image`` float32 (C, h, w), ``target`` int64 (h, w) or None, ``position`` float,
    ``annotated`` bool (K,) or None, ``key``. Picklable (for ``DataLoader`` workers)."""

    def __init__(self, cache: SliceCache, config: SliceDataConfig, num_classes: int,
                 stream: SliceStream, rank: int = 0) -> None:
        self.cache, self.config, self.num_classes = cache, config, num_classes
        self.stream, self.rank = stream, rank
        self._init_augmentation()

    def __len__(self) -> int:
        """Number of slices the stream draws from (samples are keyed, not indexed)."""
        return len(self.stream)

    def key(self, step: int, i: int) -> SampleKey:
        return self.stream.key(self.config.seed, self.rank, step, i)

    def __getitem__(self, key: SampleKey | tuple[int, int]) -> dict[str, Any]:
        if not isinstance(key, SampleKey):
            key = self.key(*key)
        image, labels = self.cache.slice(key.case_id, key.z)
        if not key.with_labels:
            labels = None
        meta = self.cache.meta(key.case_id)
        image, labels = to_spacing(image, labels, meta["spacing"][1:], self.config.spacing_mm)
        rng = np.random.default_rng(key.seed)
        image, labels = augment_slice(self._pipeline, image, labels, int(rng.integers(SEED_BOUND)))
        center = None
        if labels is not None and rng.random() < self.config.foreground_bias:
            center = foreground_center(labels, rng)
        image, labels = crop_or_pad(image, labels, self.config.crop_size, center, rng)
        return {
            "image": torch.from_numpy(image.astype(np.float32) / 255),
            "target": None if labels is None else torch.from_numpy(labels.astype(np.int64)),
            "position": float(relative_position(key.z, int(meta["num_slices"]))),
            "annotated": (None if labels is None
                          else torch.from_numpy(annotated_mask(meta, self.num_classes))),
            "key": key,
        }


class StepBatchSampler:
    """Batches of keys ``[(step, 0), ..., (step, batch_size - 1)]`` for step = start_step, ...
    (endless, or up to ``stop_step`` exclusive): the ``batch_sampler`` of a ``DataLoader``."""

    def __init__(self, batch_size: int, start_step: int = 0, stop_step: int | None = None) -> None:
        self.batch_size, self.start_step, self.stop_step = batch_size, start_step, stop_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        steps = count(self.start_step) if self.stop_step is None else range(
            self.start_step, self.stop_step)
        for step in steps:
            yield [(step, i) for i in range(self.batch_size)]

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return max(0, self.stop_step - self.start_step)


class SliceData:
    """Train / validation split of a slice cache and deterministic training batches.

    ``schema`` (default: the cache's) sets K = ``schema.num_classes``; it must hold every class
    of the cache's schema (a FLARE22 cache trains a FLARE23 model: tumor counts as not drawn).
    """

    def __init__(self, config: SliceDataConfig, schema: str | LabelSchema | None = None,
                 rank: int = 0) -> None:
        self.config, self.rank = config, rank
        self.cache = SliceCache(config.cache_dir)
        self.schema = self.cache.schema if schema is None else get_schema(schema)
        missing = sorted(set(self.cache.schema.ids) - set(self.schema.ids))
        if missing:
            raise InputError(self.cache.root / INDEX_FILE, f"the cache was built with schema "
                             f"{self.cache.schema.name}, whose class ids {missing} schema "
                             f"{self.schema.name} lacks", f"train with schema "
                             f"{self.cache.schema.name} or rebuild the cache")
        self.train_cases, self.val_cases = split_cases(self.cache, config.val_cases,
                                                       config.val_fraction, config.seed)
        self.unlabeled_cases = self.cache.unlabeled_cases + (
            self.train_cases if config.unlabeled_from_labeled else [])
        weights = None
        if config.foreground_slice_weight != 1 or config.case_weights:
            factors = case_weight_factors(self.train_cases, config.case_weights)
            weights = [factor * self._foreground_weights(c)
                       for factor, c in zip(factors, self.train_cases, strict=True)]
        self.datasets: dict[str, SliceDataset] = {"labeled": self._dataset(
            SliceStream(LABELED_STREAM, self.train_cases, self._depths(self.train_cases), True,
                        weights))}
        if self.unlabeled_cases:
            self.datasets["unlabeled"] = self._dataset(SliceStream(
                UNLABELED_STREAM, self.unlabeled_cases, self._depths(self.unlabeled_cases), False))

    def _foreground_weights(self, case_id: str) -> np.ndarray:
        """float (D,): ``foreground_slice_weight`` for slices holding a foreground class, 1
        for the others (all 1, without reading the areas, when the weight is 1)."""
        weight = self.config.foreground_slice_weight
        if weight == 1:
            return np.ones(self.cache.num_slices(case_id))
        areas = np.asarray(self.cache.class_areas(case_id))
        return 1 + (weight - 1) * (areas[:, 1:].sum(1) > 0)

    def _depths(self, cases: Sequence[str]) -> list[int]:
        return [self.cache.num_slices(c) for c in cases]

    def _dataset(self, stream: SliceStream) -> SliceDataset:
        return SliceDataset(self.cache, self.config, self.num_classes, stream, self.rank)

    @property
    def num_classes(self) -> int:
        return self.schema.num_classes

    @property
    def in_channels(self) -> int:
        """Number of CT windows (image channels) in the cache."""
        return len(self.cache.windows)

    def annotated(self, case_id: str) -> np.ndarray:
        """bool (K,) classes drawn in ``case_id`` (background True)."""
        return annotated_mask(self.cache.meta(case_id), self.num_classes)

    def dataset(self, kind: str) -> SliceDataset:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind not in self.datasets:
            raise InputError(self.cache.root / INDEX_FILE, "no cases to draw unlabeled batches "
                             "from (the cache has no unlabeled cases)", "add unlabeled scans, set "
                             "data.unlabeled_from_labeled: true, or train supervised only")
        return self.datasets[kind]

    def batch_size(self, kind: str) -> int:
        return self.config.batch_labeled if kind == "labeled" else self.config.batch_unlabeled

    def batch(self, kind: str, step: int) -> SliceBatch:
        """Batch ``step`` of ``kind`` ("labeled" / "unlabeled"), built in this process."""
        dataset = self.dataset(kind)
        if self.batch_size(kind) == 0:
            raise InputError(None, f"data.batch_{kind} is 0, yet a {kind} batch was asked for",
                             f"set data.batch_{kind} to a positive batch size")
        return collate_slices([dataset[(step, i)] for i in range(self.batch_size(kind))])

    def labeled_batch(self, step: int) -> SliceBatch:
        return self.batch("labeled", step)

    def unlabeled_batch(self, step: int) -> SliceBatch:
        return self.batch("unlabeled", step)

    def loader(self, kind: str, start_step: int = 0, stop_step: int | None = None,
               workers: int | None = None, pin_memory: bool = False) -> DataLoader:
        """A ``DataLoader`` yielding ``batch(kind, step)`` for step = start_step, start_step + 1,
        ... (endless unless ``stop_step``), built in ``workers`` processes (default
        ``config.workers``; 0 = this process)."""
        workers = self.config.workers if workers is None else workers
        return DataLoader(self.dataset(kind),
                          batch_sampler=StepBatchSampler(self.batch_size(kind), start_step,
                                                         stop_step),
                          num_workers=workers, collate_fn=collate_slices, pin_memory=pin_memory,
                          persistent_workers=workers > 0)
