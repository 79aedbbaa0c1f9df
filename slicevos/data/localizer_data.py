"""Training slices for the abdomen localizer: (slice, abdomen yes/no) drawn from the slice cache.

Labels come from the organ masks (two-stage FLARE23 paper): slice z is "abdomen" when it holds
at least one voxel of the configured organs (``abdomen_flags``, from the cache's per-slice
class areas). Only labeled cases that annotate every configured organ are used; a partially
annotated case would call abdominal slices "not abdomen" where its undrawn organs lie.

Batches are balanced: each sample is abdomen with probability ``abdomen_fraction`` (slices of
each kind drawn uniformly over the training cases), and every sample is a pure function of
(seed, rank, step, i) as in ``slicevos.data.slices``. Per sample: the configured window
channels of slice z (uint8), optional augmentation at native size, / 255, resized to the
network's ``input_size`` with ``slicevos.models.localizer.resize_slices``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from slicevos.config import check_fields
from slicevos.data.augment import AugmentedDataset, augment_slice
from slicevos.data.batch import TensorBatch
from slicevos.data.cache import INDEX_FILE, SliceCache
from slicevos.data.sampling import LABELED_STREAM, SampleKey, SliceStream, split_cases
from slicevos.data.slices import StepBatchSampler
from slicevos.errors import InputError
from slicevos.io.labels import LabelSchema
from slicevos.models.localizer import resize_slices
from slicevos.preprocessing.windowing import Window, resolve_windows

WindowSpec = str | Window | Mapping[str, float]


@dataclass(frozen=True)
class LocalizerDataConfig:
    """YAML: the ``data:`` section of ``configs/localizer/*.yaml``.

    ``windows``: the CT windows the localizer sees, as preset names or ``{level, width}``; each
    must be one of the cache's windows (matched by level and width). ``organs``: class names
    whose presence makes a slice "abdomen" (None: every class of the cache's schema except the
    tumor, which lies inside organs). ``abdomen_fraction``: probability that a drawn slice is an
    abdomen slice (None: slices drawn uniformly). ``augment``: as in ``SliceDataConfig``.
    """

    cache_dir: str
    windows: tuple[str | dict[str, Any], ...] = ("abdomen",)
    organs: tuple[str, ...] | None = None
    batch_size: int = 32
    abdomen_fraction: float | None = 0.5
    augment: str | tuple[dict[str, Any], ...] | dict[str, Any] | None = None
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.0
    workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.augment, list):
            object.__setattr__(self, "augment", tuple(self.augment))
        fraction = self.abdomen_fraction
        check_fields(self, "data", {
            "windows": (len(self.windows) > 0, "a list of windows, e.g. [abdomen]"),
            "batch_size": (self.batch_size >= 1, "a positive integer"),
            "abdomen_fraction": (fraction is None or 0 < fraction < 1,
                                 "a probability strictly between 0 and 1, or null"),
            "val_fraction": (0 <= self.val_fraction < 1, "a fraction in [0, 1)"),
            "workers": (self.workers >= 0, "an integer >= 0"),
            "seed": (self.seed >= 0, "an integer >= 0"),
        })


def abdomen_flags(areas: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """bool (D,): slice z holds a voxel of any of ``class_ids``. ``areas``: voxels per slice and
    class id, (D, K) (``SliceCache.class_areas``, or ``slicevos.data.cache.class_areas(labels,
    K)`` for a mask volume (D, H, W))."""
    areas = np.asarray(areas)
    ids = [int(i) for i in class_ids]
    if areas.ndim != 2 or not ids or max(ids) >= areas.shape[1] or min(ids) < 1:
        raise ValueError(f"need areas (D, K) and class ids in 1..K-1, got {areas.shape} and {ids}")
    return areas[:, ids].sum(axis=1) > 0


def organ_ids(schema: LabelSchema, organs: Sequence[str] | None) -> tuple[int, ...]:
    """Class ids of ``organs`` in ``schema`` (None: every class but the tumor)."""
    if organs is None:
        return tuple(c.id for c in schema.classes if c.name != "tumor")
    unknown = sorted(set(organs) - set(schema.names))
    if unknown or not organs:
        problem = (f"data.organs names classes that schema {schema.name} lacks: {unknown}"
                   if unknown else "data.organs is empty")
        raise InputError(None, problem, f"use names from {list(schema.names)[:14]}, or null "
                         "for every organ")
    return tuple(schema.id_of(name) for name in organs)


def match_windows(available: Sequence[WindowSpec], wanted: Sequence[WindowSpec]
                  ) -> list[int] | None:
    """Channel indices of the ``wanted`` windows among the ``available`` ones (matched by level
    and width), or None when one is missing. Entries: preset names, ``Window`` or mappings."""
    have = [(w.level, w.width) for w in resolve_windows(available)]
    out = []
    for w in resolve_windows(wanted):
        if (w.level, w.width) not in have:
            return None
        out.append(have.index((w.level, w.width)))
    return out


@dataclass
class LocalizerBatch(TensorBatch):
    """``image`` float32 (B, C, S, S) in [0, 1] (S = the network's input size); ``target``
    float32 (B,) 1 = abdomen, 0 = not; ``keys`` which case and slice each sample is."""

    image: torch.Tensor
    target: torch.Tensor
    keys: tuple[SampleKey, ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return self.image.shape[0]


def collate_localizer(samples: Sequence[Mapping[str, Any]]) -> LocalizerBatch:
    return LocalizerBatch(image=torch.stack([s["image"] for s in samples]),
                          target=torch.tensor([s["target"] for s in samples], dtype=torch.float32),
                          keys=tuple(s["key"] for s in samples))


class LocalizerDataset(AugmentedDataset):
    """``dataset[(step, i)]`` or ``dataset[SampleKey]`` -> {"image" float32 (C, S, S),
    "target" float, "key"}. Picklable (for ``DataLoader`` workers)."""

    def __init__(self, cache: SliceCache, config: LocalizerDataConfig, channels: Sequence[int],
                 flags: Mapping[str, np.ndarray], stream: SliceStream, input_size: int,
                 rank: int = 0) -> None:
        self.cache, self.config, self.channels = cache, config, list(channels)
        self.flags, self.stream, self.input_size, self.rank = flags, stream, input_size, rank
        self._init_augmentation()

    def __len__(self) -> int:
        """Number of slices the stream draws from (samples are keyed, not indexed)."""
        return len(self.stream)

    def __getitem__(self, key: SampleKey | tuple[int, int]) -> dict[str, Any]:
        if not isinstance(key, SampleKey):
            key = self.stream.key(self.config.seed, self.rank, *key)
        image, _ = self.cache.slice(key.case_id, key.z)
        image, _ = augment_slice(self._pipeline, image[self.channels], None, key.seed)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255)
        return {"image": resize_slices(tensor[None], self.input_size)[0],
                "target": float(self.flags[key.case_id][key.z]), "key": key}


class LocalizerData:
    """Training / validation cases of a slice cache for the localizer and deterministic
    balanced batches (see module doc). ``input_size``: the network's input side S."""

    def __init__(self, config: LocalizerDataConfig, input_size: int, rank: int = 0) -> None:
        self.config, self.input_size, self.rank = config, input_size, rank
        self.cache = SliceCache(config.cache_dir)
        where = self.cache.root / INDEX_FILE
        channels = match_windows(self.cache.windows, config.windows)
        if channels is None:
            raise InputError(where, f"data.windows {list(config.windows)} are not all among the "
                             f"cache's windows {list(self.cache.windows)}", "use windows of the "
                             "cache, or rebuild the cache with slicevos-prepare-data including them")
        self.channels = channels
        self.windows = [dict(self.cache.windows[c]) for c in channels]
        self.class_ids = organ_ids(self.cache.schema, config.organs)
        train, val = split_cases(self.cache, config.val_cases, config.val_fraction, config.seed)
        usable = {c for c in self.cache.labeled_cases if set(self.class_ids) <= set(
            self.cache.meta(c).get("annotated_class_ids") or [])}
        self.skipped_cases = [c for c in self.cache.labeled_cases if c not in usable]
        if set(config.val_cases) - usable:
            raise InputError(where, f"val_cases {sorted(set(config.val_cases) - usable)} do "
                             "not annotate every localizer organ", "hold out fully annotated "
                             "cases, or narrow data.organs")
        self.train_cases = [c for c in train if c in usable]
        self.val_cases = [c for c in val if c in usable]
        self.flags = {c: abdomen_flags(self.cache.class_areas(c), self.class_ids)
                      for c in self.train_cases + self.val_cases}
        stream = SliceStream(LABELED_STREAM, self._check_train(where),
                             [self.cache.num_slices(c) for c in self.train_cases], True,
                             self._weights())
        self.dataset = LocalizerDataset(self.cache, config, channels, self.flags, stream,
                                        input_size, rank)

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def _check_train(self, where: Any) -> list[str]:
        if not self.train_cases:
            raise InputError(where, f"no training case annotates every localizer organ "
                             f"(ids {list(self.class_ids)}); skipped {self.skipped_cases[:5]}",
                             "add fully annotated cases or narrow data.organs")
        flags = np.concatenate([self.flags[c] for c in self.train_cases])
        if flags.all() or not flags.any():
            kind = "abdomen" if flags.all() else "not abdomen"
            raise InputError(where, f"every training slice is {kind}, the localizer has nothing "
                             "to tell apart", "add scans that extend beyond the abdomen (chest, "
                             "pelvis), or change data.organs")
        return self.train_cases

    def _weights(self) -> list[np.ndarray] | None:
        """Per-case slice weights giving P(abdomen) = ``abdomen_fraction`` (None: uniform)."""
        fraction = self.config.abdomen_fraction
        if fraction is None:
            return None
        flags = [self.flags[c] for c in self.train_cases]
        positives = sum(int(f.sum()) for f in flags)
        negatives = sum(f.size for f in flags) - positives
        return [np.where(f, fraction / positives, (1 - fraction) / negatives) for f in flags]

    def batch(self, step: int) -> LocalizerBatch:
        """Training batch ``step``, built in this process."""
        return collate_localizer([self.dataset[(step, i)] for i in range(self.config.batch_size)])

    def loader(self, start_step: int = 0, pin_memory: bool = False) -> DataLoader:
        """Endless ``DataLoader`` yielding ``batch(step)`` for step = start_step, ... built in
        ``config.workers`` processes."""
        return DataLoader(self.dataset, batch_sampler=StepBatchSampler(
            self.config.batch_size, start_step), num_workers=self.config.workers,
            collate_fn=collate_localizer, pin_memory=pin_memory,
            persistent_workers=self.config.workers > 0)
