"""Per-case report of ``slicevos-infer --report``: organ volumes, slice ranges, key slices,
timing per stage, peak memory, per-slice uncertainty and the slices to correct first.

Axes are the canonical ones of ``slicevos.io.volume``: labels are (D, H, W), z = slice index
(0 = most inferior), spacing ``(dz, dy, dx)`` in mm.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from slicevos import __version__
from slicevos.data.cache import class_areas, class_stats
from slicevos.io.atomic import atomic_write_bytes
from slicevos.io.labels import LabelSchema
from slicevos.io.nifti import save_volume
from slicevos.io.volume import Geometry, Volume
from slicevos.metrics.efficiency import EfficiencyMeter

MODES = ("automatic", "semi-automatic")
KEY_SOURCES = ("reference", "user")
_CHUNK = 16  # slices per bincount chunk: bounds the int64 temporaries to ~16 slices


def check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` mm as three positive finite floats, else ValueError."""
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive mm values (dz, dy, dx), got {spacing_mm}")
    return spacing


def slice_class_areas(labels: np.ndarray) -> np.ndarray:
    """uint32 (D, 256): voxels of class id k on slice z of uint8 ``labels`` (D, H, W).

    Computed in chunks of slices, so memory stays bounded for 1000+ slice volumes.
    """
    if labels.ndim != 3 or labels.dtype != np.uint8:
        raise ValueError(f"expected uint8 labels (D, H, W), got {labels.dtype} {labels.shape}")
    return np.concatenate([class_areas(labels[z:z + _CHUNK], 256)
                           for z in range(0, labels.shape[0], _CHUNK)])


def organ_statistics(labels: np.ndarray, spacing_mm: Sequence[float], schema: LabelSchema,
                     areas: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per organ present, keyed by name: ``id``, ``voxels``, ``volume_ml`` (voxels x dz*dy*dx
    / 1000), ``slice_range`` [first, last] (canonical z, inclusive) and ``num_slices``.

    ``areas``: the (D, 256) :func:`slice_class_areas` of ``labels`` when already computed.
    Raises ValueError for label ids the schema does not define.
    """
    areas = slice_class_areas(labels) if areas is None else areas
    voxel_ml = float(np.prod(check_spacing(spacing_mm))) / 1000.0
    unknown = sorted(set(np.flatnonzero(areas.sum(axis=0)).tolist()) - {0, *schema.ids})
    if unknown:
        raise ValueError(f"label ids {unknown[:10]} are not in schema {schema.name}")
    out = {}
    for key, stats in class_stats(areas, schema).items():
        out[stats["name"]] = {
            "id": int(key), "voxels": stats["voxels"], "volume_ml": stats["voxels"] * voxel_ml,
            "slice_range": [stats["z_first"], stats["z_last"]], "num_slices": stats["num_slices"],
        }
    return out


def uncertainty_ranking(per_slice_uncertainty: np.ndarray | Sequence[float], k: int = 5,
                        min_separation: int = 3) -> list[int]:
    """The ``k`` slices to correct first: highest uncertainty first, NaN (not processed) and
    infinite values ignored. A chosen slice z suppresses every slice within
    ``min_separation`` of it (|z' - z| <= min_separation), so neighbours of one bad region do
    not fill the list. Ties go to the lower z. Returns at most ``k`` canonical z indices."""
    values = np.asarray(per_slice_uncertainty, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"expected per-slice uncertainty of shape (D,), got {values.shape}")
    if k < 0 or min_separation < 0:
        raise ValueError(f"k and min_separation must be >= 0, got {k}, {min_separation}")
    candidates = np.flatnonzero(np.isfinite(values))
    order = candidates[np.argsort(-values[candidates], kind="stable")]
    chosen: list[int] = []
    for z in order.tolist():
        if len(chosen) == k:
            break
        if all(abs(z - c) > min_separation for c in chosen):
            chosen.append(z)
    return chosen


def uncertainty_list(per_slice_uncertainty: np.ndarray) -> list[float | None]:
    """(D,) float -> JSON-ready list: floats, None where NaN (slice not processed)."""
    return [None if math.isnan(v) else float(v)
            for v in np.asarray(per_slice_uncertainty, dtype=np.float64).tolist()]


def memory_summary(meter: EfficiencyMeter) -> dict[str, float | None]:
    """Peak memory in MB from a finished :class:`EfficiencyMeter`: process RSS, sampled GPU
    memory (NVML, all processes, the FLARE measure) and torch's peak allocation; GPU fields
    None without CUDA."""
    return {"peak_rss_mb": meter.peak_rss_mb, "peak_gpu_mb": meter.peak_gpu_mb,
            "peak_cuda_allocated_mb": meter.peak_cuda_mb}


class StageTimer:
    """Accumulates wall seconds per named stage; ``with timer("propagation"): ...``.

    With a CUDA ``device`` the GPU is synchronised on entering and leaving a stage, so queued
    kernels are charged to the stage that launched them. ``seconds``: stage -> seconds, in the
    order the stages first ran.
    """

    def __init__(self, device: Any = None) -> None:
        self.seconds: dict[str, float] = {}
        self._cuda = device if device is not None and str(device).startswith("cuda") else None

    def _sync(self) -> None:
        if self._cuda is not None:
            import torch

            torch.cuda.synchronize(self._cuda)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))


@dataclass
class CaseReport:
    """What one inference run did to one case (all z are canonical slice indices).

    ``processed_z_range``: [first, last] slices the localizer kept (None: all). ``key_source``:
    ``reference`` (automatic mode) or ``user`` (semi-automatic). ``per_slice_uncertainty``:
    length D, None for slices not processed. ``slices_to_correct``: with user keys, where a
    new key removes the most expected error (``slicevos.inference.suggestions``); with
    reference keys, from :func:`uncertainty_ranking`. ``memory_mb``: :func:`memory_summary`.
    ``organs``: :func:`organ_statistics`. ``checkpoints``: role -> path. ``config``: JSON-able
    settings.
    """

    input_path: str
    output_path: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    schema: str
    mode: str = "automatic"
    key_slices: list[int] = field(default_factory=list)
    key_source: str = "reference"
    processed_z_range: tuple[int, int] | None = None
    timing_s: dict[str, float] = field(default_factory=dict)
    memory_mb: dict[str, float | None] = field(default_factory=dict)
    organs: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_slice_uncertainty: list[float | None] = field(default_factory=list)
    slices_to_correct: list[int] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        self.input_path, self.output_path = str(self.input_path), str(self.output_path)
        self.shape = tuple(int(s) for s in self.shape)
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)
        if len(self.shape) != 3 or len(self.spacing_mm) != 3:
            raise ValueError(f"shape and spacing must be (D, H, W) / (dz, dy, dx), got "
                             f"{self.shape} / {self.spacing_mm}")
        if self.mode not in MODES or self.key_source not in KEY_SOURCES:
            raise ValueError(f"mode must be one of {MODES} and key_source one of {KEY_SOURCES}, "
                             f"got {self.mode!r} / {self.key_source!r}")
        depth = self.shape[0]
        self.key_slices = [int(z) for z in self.key_slices]
        if any(not 0 <= z < depth for z in self.key_slices):
            raise ValueError(f"key slices {self.key_slices} outside 0..{depth - 1}")
        if self.processed_z_range is not None:
            first, last = (int(z) for z in self.processed_z_range)
            if not 0 <= first <= last < depth:
                raise ValueError(f"processed z range {self.processed_z_range} outside 0..{depth - 1}")
            self.processed_z_range = (first, last)
        if self.per_slice_uncertainty and len(self.per_slice_uncertainty) != depth:
            raise ValueError(f"{len(self.per_slice_uncertainty)} per-slice uncertainties for "
                             f"{depth} slices")
        self.checkpoints = {k: str(v) for k, v in self.checkpoints.items()}

    def set_uncertainty(self, per_slice: np.ndarray, k: int = 5, min_separation: int = 3,
                        ranked: Sequence[int] = ()) -> None:
        """Store the (D,) per-slice uncertainty (NaN = not processed) and the slices to check
        first: ``ranked`` (already best first, e.g. the labeller's "check next" rule) when
        given, else the top-k of ``per_slice`` (:func:`uncertainty_ranking`)."""
        if len(per_slice) != self.shape[0]:
            raise ValueError(f"{len(per_slice)} per-slice uncertainties for {self.shape[0]} slices")
        self.per_slice_uncertainty = uncertainty_list(per_slice)
        self.slices_to_correct = ([int(z) for z in ranked][:k] if len(ranked) else
                                  uncertainty_ranking(per_slice, k, min_separation))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseReport:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_report(path: str | PathLike, report: CaseReport) -> Path:
    """Write ``report`` as indented JSON, atomically (NaN is not allowed: use None)."""
    text = json.dumps(report.to_dict(), indent=2, default=_json_default, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())
    return Path(path)


def read_report(path: str | PathLike) -> CaseReport:
    return CaseReport.from_dict(json.loads(Path(path).read_text()))


def save_uncertainty_map(path: str | PathLike, uncertainty: np.ndarray,
                         geometry: Geometry | Volume) -> Path:
    """Write a canonical (D, H, W) uncertainty map as NIfTI in the input's own geometry.

    Stored as uint8 with ``scl_slope = 1/255``, so it reads back as 0..1 floats. Float input
    must lie in [0, 1] (NaN = not processed, stored as 0); uint8 input is taken as 0..255
    = 0..1. Converted in chunks of slices (bounded memory); the write is atomic.
    """
    if uncertainty.ndim != 3:
        raise ValueError(f"expected a (D, H, W) map, got shape {uncertainty.shape}")
    if uncertainty.dtype == np.uint8:
        stored = uncertainty
    elif np.issubdtype(uncertainty.dtype, np.floating):
        stored = np.empty(uncertainty.shape, np.uint8)
        for z in range(0, uncertainty.shape[0], _CHUNK):
            chunk = np.nan_to_num(uncertainty[z:z + _CHUNK].astype(np.float32), nan=0.0)
            if chunk.size and (chunk.min() < 0 or chunk.max() > 1):
                raise ValueError(f"uncertainty must lie in [0, 1], got {chunk.min()}..{chunk.max()}")
            stored[z:z + _CHUNK] = np.rint(chunk * 255)
    else:
        raise ValueError(f"expected a float or uint8 map, got {uncertainty.dtype}")
    return save_volume(stored, geometry, path, slope=1.0 / 255.0, inter=0.0)
