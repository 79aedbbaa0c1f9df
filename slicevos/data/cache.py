"""The slice cache: windowed uint8 slices and labels of every case, memory-mappable.

Layout of a cache folder (``slicevos-prepare-data`` / ``slicevos.data.cache_build`` writes it,
``SliceCache`` reads it)::

    CACHE/
      index.json                    settings, finished cases (labeled / unlabeled), failed cases
      cases/<case>/image.npy        uint8 (D, C, H, W): C CT windows as channels
      cases/<case>/labels.npy       uint8 (D, H, W): schema class ids (labeled cases only)
      cases/<case>/class_areas.npy  uint32 (D, K), K = schema.num_classes: voxels of class id k
                                    on slice z (labeled cases only; for key-slice sampling)
      cases/<case>/meta.json        case_id, split, source paths, spacing [dz, dy, dx] mm,
                                    num_slices/channels/height/width, annotated_class_ids,
                                    partial, classes {id: name, voxels, z_first, z_last,
                                    num_slices}, windows, schema, geometry, timing_s

Axes are the canonical ones of ``slicevos.io.volume`` (z inferior -> superior, rows anterior ->
posterior, columns patient right -> left); ``meta["geometry"]`` (``Geometry.to_dict()``) maps
results back to the source file. Everything is lossless ``.npy``.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from slicevos.errors import InputError
from slicevos.io.labels import LabelSchema, get_schema
from slicevos.io.volume import Geometry

FORMAT_VERSION = 1
CASES_DIR, INDEX_FILE, META_FILE = "cases", "index.json", "meta.json"
IMAGE_FILE, LABELS_FILE, AREAS_FILE = "image.npy", "labels.npy", "class_areas.npy"


def read_meta(case_dir: Path) -> dict[str, Any] | None:
    """A case folder's meta.json, or None when it is missing or unreadable."""
    try:
        return json.loads((case_dir / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _levels(windows: list[dict[str, Any]] | None) -> list[tuple[float, float]]:
    return [(w["level"], w["width"]) for w in windows or []]


def class_areas(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """uint32 (D, K): number of voxels of class id k on slice z of ``labels`` (D, H, W)."""
    depth = labels.shape[0]
    offsets = (np.arange(depth, dtype=np.int64) * num_classes)[:, None, None]
    counts = np.bincount((labels + offsets).ravel(), minlength=depth * num_classes)
    return counts.reshape(depth, num_classes).astype(np.uint32)


def class_stats(areas: np.ndarray, schema: LabelSchema) -> dict[str, dict[str, Any]]:
    """Per present class: voxel count and the z range / number of slices that hold it."""
    out = {}
    for c in schema.classes:
        zs = np.flatnonzero(areas[:, c.id])
        if zs.size:
            out[str(c.id)] = {"name": c.name, "voxels": int(areas[:, c.id].sum()),
                              "z_first": int(zs[0]), "z_last": int(zs[-1]), "num_slices": int(zs.size)}
    return out


class SliceCache:
    """Read access to a cache folder; arrays are opened lazily as read-only memmaps.

    Picklable for data-loader workers: open memmaps are dropped and reopened in the worker.
    """

    def __init__(self, root: str | PathLike) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX_FILE
        try:
            self.index: dict[str, Any] = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise InputError(index_path, "not found, this is not a finished slice cache",
                             "build it with slicevos-prepare-data DATASET_DIR CACHE_DIR") from None
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(index_path, f"unreadable ({err})",
                             "rebuild the cache with slicevos-prepare-data") from None
        if self.index.get("format_version") != FORMAT_VERSION:
            raise InputError(index_path, f"cache format {self.index.get('format_version')}, this "
                             f"slicevos reads format {FORMAT_VERSION}",
                             "rebuild the cache with slicevos-prepare-data")
        self._meta: dict[str, dict[str, Any]] = {}
        for case_id in self.index["cases"]:
            meta = read_meta(self._case_dir(case_id))
            if meta is None:
                raise InputError(self._case_dir(case_id) / META_FILE, "listed in index.json but "
                                 "missing", "rerun slicevos-prepare-data on this cache")
            if (meta.get("schema"), _levels(meta.get("windows"))) != (
                    self.index["schema"], _levels(self.index["windows"])):
                raise InputError(self._case_dir(case_id) / META_FILE, "built with other windows "
                                 "or schema than index.json says (an interrupted rebuild)",
                                 "rerun slicevos-prepare-data on this cache")
            self._meta[case_id] = meta
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def _case_dir(self, case_id: str) -> Path:
        return self.root / CASES_DIR / case_id

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def __len__(self) -> int:
        return len(self._meta)

    @property
    def cases(self) -> list[dict[str, Any]]:
        """meta.json of every finished case, in index order."""
        return list(self._meta.values())

    @property
    def case_ids(self) -> list[str]:
        return list(self._meta)

    @property
    def labeled_cases(self) -> list[str]:
        return [c for c, m in self._meta.items() if m["split"] == "labeled"]

    @property
    def unlabeled_cases(self) -> list[str]:
        return [c for c, m in self._meta.items() if m["split"] == "unlabeled"]

    @property
    def schema(self) -> LabelSchema:
        return get_schema(self.index["schema"])

    @property
    def windows(self) -> list[dict[str, Any]]:
        """``[{"name", "level", "width"}]`` in channel order."""
        return self.index["windows"]

    @property
    def total_slices(self) -> int:
        return sum(int(m["num_slices"]) for m in self._meta.values())

    def meta(self, case_id: str) -> dict[str, Any]:
        try:
            return self._meta[case_id]
        except KeyError:
            raise KeyError(f"case {case_id!r} is not in the cache {self.root}") from None

    def num_slices(self, case_id: str) -> int:
        return int(self.meta(case_id)["num_slices"])

    def geometry(self, case_id: str) -> Geometry:
        return Geometry.from_dict(self.meta(case_id)["geometry"])

    def _array(self, case_id: str, name: str) -> np.ndarray | None:
        key = (case_id, name)
        if key not in self._arrays:
            self.meta(case_id)
            path = self._case_dir(case_id) / name
            if not path.is_file():
                return None
            self._arrays[key] = np.load(path, mmap_mode="r")
        return self._arrays[key]

    def image(self, case_id: str) -> np.ndarray:
        """Read-only memmap uint8 (D, C, H, W)."""
        return self._array(case_id, IMAGE_FILE)

    def labels(self, case_id: str) -> np.ndarray | None:
        """Read-only memmap uint8 (D, H, W), None for an unlabeled case."""
        return self._array(case_id, LABELS_FILE)

    def class_areas(self, case_id: str) -> np.ndarray | None:
        """Read-only memmap uint32 (D, K): voxels of class id k on slice z; None if unlabeled."""
        return self._array(case_id, AREAS_FILE)

    def slice(self, case_id: str, z: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Slice ``z`` as in-memory arrays: image uint8 (C, H, W), labels uint8 (H, W) or None."""
        depth = self.num_slices(case_id)
        if not -depth <= z < depth:
            raise IndexError(f"slice {z} out of range for case {case_id!r} with {depth} slices")
        labels = self.labels(case_id)
        return np.array(self.image(case_id)[z]), None if labels is None else np.array(labels[z])
