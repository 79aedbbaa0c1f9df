"""Build the slice cache (``slicevos-prepare-data``); the format is in ``slicevos.data.cache``.

Kill safety: a case is built in ``cases/.<case>.tmp-<pid>/`` (``meta.json`` last, every file
fsynced) and renamed to ``cases/<case>/`` when complete, so a folder named after a case is
always whole. A rerun skips cases whose ``meta.json`` matches the settings (windows, schema,
annotated classes, source file size and mtime) and removes temp folders left by a killed run.
``index.json`` is written last, atomically, and only when its content changes.

Test hook: with the environment variable ``SLICEVOS_TEST_EXIT_AFTER=N`` a process that has
built N cases calls ``os._exit(75)`` halfway through writing its next case (after image.npy),
which simulates a kill. Only the test suite sets it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from slicevos.data.cache import (
    AREAS_FILE,
    CASES_DIR,
    FORMAT_VERSION,
    IMAGE_FILE,
    INDEX_FILE,
    LABELS_FILE,
    META_FILE,
    class_areas,
    class_stats,
    read_meta,
)
from slicevos.data.dataset_folder import (
    CaseSource,
    check_cache_location,
    discover_cases,
    source_fingerprint,
)
from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes
from slicevos.io.labels import LabelSchema, get_schema
from slicevos.io.loader import load_volume
from slicevos.io.nifti import load_labels
from slicevos.preprocessing.windowing import DEFAULT_WINDOWS, Window, resolve_windows, window_volume

TEST_EXIT_AFTER_ENV = "SLICEVOS_TEST_EXIT_AFTER"
_TEMP_MARKERS = (".tmp-", ".old-")
_LEVEL_WIDTH = re.compile(r"^L(-?\d+(?:\.\d+)?)/?W(\d+(?:\.\d+)?)$", re.IGNORECASE)
_SETTING_KEYS = ("format_version", "schema", "windows", "annotated_class_ids", "fingerprint")
log = logging.getLogger(__name__)
_built_in_this_process = 0


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of ``slicevos-prepare-data`` (YAML: ``configs/data/prepare.yaml``).

    ``windows`` entries are preset names or ``{level: HU, width: HU, name: optional}``;
    ``workers`` None means min(2, CPU count).
    """

    schema: str = "flare22"
    windows: tuple[str | dict[str, Any], ...] = DEFAULT_WINDOWS
    workers: int | None = None
    skip_bad: bool = False


@dataclass
class PrepareSummary:
    built: list[dict[str, Any]] = field(default_factory=list)  # meta of each case built now
    skipped: list[str] = field(default_factory=list)  # up to date, left as they were
    failed: dict[str, str] = field(default_factory=dict)  # case id -> one-line error
    total_slices: int = 0  # over every finished case in the cache
    seconds: float = 0.0


def parse_window(entry: Any) -> Any:
    """``"L-600/W1500"`` -> ``{"name": "L-600/W1500", "level": -600.0, "width": 1500.0}``;
    anything else (a preset name, a mapping, a ``Window``) is returned unchanged."""
    match = _LEVEL_WIDTH.match(entry) if isinstance(entry, str) else None
    if match is None:
        return entry
    return {"name": entry, "level": float(match.group(1)), "width": float(match.group(2))}


def windows_to_json(windows: Sequence[str | Window | dict[str, Any]]) -> list[dict[str, Any]]:
    """Windows (preset names, ``L<level>/W<width>`` strings, ``{level, width, name}`` mappings or
    ``Window``) resolved to ``[{"name", "level", "width"}]``; name None for unnamed ones."""
    windows = [parse_window(w) for w in windows]
    resolved = resolve_windows(windows)
    names = [w if isinstance(w, str) else (w.get("name") if isinstance(w, dict) else None)
             for w in windows]
    return [{"name": n, "level": w.level, "width": w.width} for n, w in zip(names, resolved, strict=True)]


def case_settings(source: CaseSource, schema: LabelSchema, windows: list[dict]) -> dict[str, Any]:
    """What a cached case must match to be reused (window names do not matter)."""
    return {
        "format_version": FORMAT_VERSION,
        "schema": schema.name,
        "windows": [{"level": w["level"], "width": w["width"]} for w in windows],
        "annotated_class_ids": list(source.annotated_class_ids),
        "fingerprint": {"image": source_fingerprint(source.image_path),
                        "labels": None if source.label_path is None
                        else source_fingerprint(source.label_path)},
    }


def _settings_of(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: meta.get(k) for k in _SETTING_KEYS}
    out["windows"] = [{"level": w["level"], "width": w["width"]} for w in meta.get("windows", [])]
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
        f.flush()
        os.fsync(f.fileno())


def _test_exit_hook() -> None:
    limit = os.environ.get(TEST_EXIT_AFTER_ENV)
    if limit is not None and _built_in_this_process >= int(limit):
        os._exit(75)


def _check_annotated(labels_present: list[int], source: CaseSource) -> None:
    extra = sorted(set(labels_present) - set(source.annotated_class_ids))
    if extra:
        raise InputError(source.label_path, f"labels hold class ids {extra} that the annotations "
                         f"file does not list for case {source.case_id} (listed: "
                         f"{list(source.annotated_class_ids)})",
                         "add them to the case's list in annotations.yaml or remove them")


def build_case(source: CaseSource, cases_dir: Path, schema: LabelSchema,
               windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Load, validate, window and write one case; returns its meta. Atomic (see module doc)."""
    global _built_in_this_process
    final = cases_dir / source.case_id
    tmp = cases_dir / f".{source.case_id}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        settings = case_settings(source, schema, windows)  # before reading: a later edit rebuilds
        t0 = time.perf_counter()
        volume = load_volume(source.image_path)
        labels = None
        if source.label_path is not None:
            labels, _ = load_labels(source.label_path, reference=volume, schema=schema)
        t1 = time.perf_counter()
        image = window_volume(volume.hu, windows)
        t2 = time.perf_counter()
        _save_npy(tmp / IMAGE_FILE, image)
        _test_exit_hook()
        classes = None
        if labels is not None:
            areas = class_areas(labels, schema.num_classes)
            classes = class_stats(areas, schema)
            _check_annotated([int(k) for k in classes], source)
            _save_npy(tmp / LABELS_FILE, labels)
            _save_npy(tmp / AREAS_FILE, areas)
        depth, channels, height, width = image.shape
        meta = {
            **settings, "windows": windows, "case_id": source.case_id, "split": source.split,
            "source": {"image": str(source.image_path.absolute()),
                       "labels": None if source.label_path is None
                       else str(source.label_path.absolute())},
            "partial": source.label_path is not None
            and tuple(source.annotated_class_ids) != schema.ids,
            "num_slices": depth, "channels": channels, "height": height, "width": width,
            "spacing": list(volume.spacing), "geometry": volume.geometry.to_dict(),
            "classes": classes,
        }
        t3 = time.perf_counter()
        meta["timing_s"] = {"load": round(t1 - t0, 4), "window": round(t2 - t1, 4),
                            "write": round(t3 - t2, 4), "total": round(t3 - t0, 4)}
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _built_in_this_process += 1
    return meta


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)


def remove_stale_temp_dirs(cases_dir: Path) -> list[Path]:
    """Delete ``.<case>.tmp-<pid>`` / ``.<case>.old-<pid>`` folders whose process is gone."""
    removed = []
    for path in cases_dir.glob(".*"):
        marker = next((m for m in _TEMP_MARKERS if m in path.name), None)
        if marker is None or not path.is_dir():
            continue
        pid = path.name.rsplit(marker, 1)[1]
        if pid.isdigit() and psutil.pid_exists(int(pid)) and int(pid) != os.getpid():
            continue  # another run is writing it
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@dataclass
class _Result:
    case_id: str
    meta: dict[str, Any] | None = None
    error: InputError | None = None  # bad input: a clear message for the user
    crash: BaseException | None = None  # any other exception (a bug or an unreadable input)


def _build_result(source: CaseSource, cases_dir: Path, schema_name: str,
                  windows: list[dict[str, Any]]) -> _Result:
    """Pool entry point: a bad input comes back as data, so --skip-bad can record it."""
    try:
        return _Result(source.case_id, meta=build_case(source, cases_dir, get_schema(schema_name),
                                                       windows))
    except InputError as err:
        return _Result(source.case_id, error=err)


def _run_builds(todo: list[CaseSource], cases_dir: Path, schema: LabelSchema,
                windows: list[dict[str, Any]], workers: int) -> Iterator[_Result]:
    """Yield results as cases finish; in-process for one worker. Closing the iterator cancels
    cases not started yet (started ones finish atomically)."""
    if workers <= 1 or len(todo) <= 1:
        for source in todo:
            try:
                yield _build_result(source, cases_dir, schema.name, windows)
            except Exception as err:  # noqa: BLE001 - the caller decides
                yield _Result(source.case_id, crash=err)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)))
    try:
        futures = {pool.submit(_build_result, s, cases_dir, schema.name, windows): s for s in todo}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as err:  # noqa: BLE001 - the caller decides
                yield _Result(futures[future].case_id, crash=err)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def prepare_cache(dataset_dir: str | PathLike, cache_dir: str | PathLike,
                  config: PrepareConfig = PrepareConfig(), overwrite: bool = False,
                  progress: bool = True) -> PrepareSummary:
    """Build or update the slice cache of a FLARE-layout dataset folder; see the module doc.

    A bad case raises its InputError (finished cases stay, no index is written) unless
    ``config.skip_bad``, which records it under ``failed`` in index.json and goes on.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    dataset_dir, cache_dir = Path(dataset_dir), Path(cache_dir)
    schema = get_schema(config.schema)
    windows = windows_to_json(config.windows)
    sources = discover_cases(dataset_dir, schema)
    check_cache_location(dataset_dir, cache_dir)
    cases_dir = cache_dir / CASES_DIR
    cases_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temp_dirs(cases_dir):
        log.info("removed unfinished %s from an interrupted run", path.name)

    summary = PrepareSummary()
    todo = []
    for source in sources:
        meta = None if overwrite else read_meta(cases_dir / source.case_id)
        if meta is not None and _settings_of(meta) == case_settings(source, schema, windows):
            summary.skipped.append(source.case_id)
        else:
            todo.append(source)
    workers = config.workers or min(2, os.cpu_count() or 1)
    results = _run_builds(todo, cases_dir, schema, windows, workers)
    with tqdm(total=len(todo), desc="prepare", unit="case", disable=not progress or not todo) as bar:
        for result in results:
            bar.update(1)
            if result.meta is not None:
                summary.built.append(result.meta)
                continue
            err = result.error or result.crash
            if not config.skip_bad:
                results.close()
                raise err
            log.warning("skipped bad case %s: %s", result.case_id, err,
                        exc_info=result.crash)
            summary.failed[result.case_id] = str(err) if result.error else repr(err)

    done = set(summary.skipped) | {m["case_id"] for m in summary.built}
    finished = [s for s in sources if s.case_id in done]
    index = {
        "format_version": FORMAT_VERSION,
        "schema": schema.name,
        "windows": windows,
        "dataset": str(dataset_dir.absolute()),
        "cases": [s.case_id for s in finished],
        "labeled": [s.case_id for s in finished if s.split == "labeled"],
        "unlabeled": [s.case_id for s in finished if s.split == "unlabeled"],
        "failed": summary.failed,
    }
    data = json.dumps(index, indent=1).encode()
    index_path = cache_dir / INDEX_FILE
    if not index_path.is_file() or index_path.read_bytes() != data:
        atomic_write_bytes(index_path, data)
    summary.total_slices = sum(int(read_meta(cases_dir / c)["num_slices"]) for c in index["cases"])
    summary.seconds = time.perf_counter() - start
    return summary
