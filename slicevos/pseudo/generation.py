"""Pseudo-label generation on disk: which cases, which shard, and a kill-safe folder per case.

::

    PSEUDO/
      <case_id>/members.npz          "labels" uint8 (M, D, H, W) canonical (D, H, W) grid,
                                     "member_names" str (M,)
      <case_id>/pseudo_label.nii.gz  fused labels (majority vote) in the input image's geometry
      <case_id>/case.json            written last: case_id, image, schema, members, consensus

A case is written in ``PSEUDO/.<case>.tmp-<pid>/`` (case.json last, files fsynced) and renamed
to ``PSEUDO/<case>/``, so a folder named after a case is whole. A rerun skips a case whose
case.json names the same image (path, size, mtime) and the same members (names, checkpoint
files, flips); a case folder without case.json, or made by other members, is redone.

Rank r of W processes takes ``sorted(cases)[r::W]``; shards are disjoint, so ranks never write
the same folder. The prediction itself is injected (``predict(volume) -> (M, D, H, W)``), so
this module needs no model code; ``slicevos.inference.reference.ensemble`` provides it.

Test hook: ``SLICEVOS_TEST_EXIT_AFTER=N`` makes a process that has written N cases call
``os._exit(75)`` halfway through its next case (after members.npz), like a kill.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from slicevos.data.cache_build import TEST_EXIT_AFTER_ENV, remove_stale_temp_dirs
from slicevos.data.dataset_folder import discover_cases, source_fingerprint
from slicevos.errors import InputError
from slicevos.io.labels import LabelSchema
from slicevos.io.loader import load_volume
from slicevos.io.nifti import is_nifti, save_labels, strip_nifti_suffix
from slicevos.io.volume import Volume
from slicevos.pseudo.consensus import DEFAULT_VARIANT, consensus_score, fuse_members
from slicevos.pseudo.folder import CASE_FILE, MEMBERS_FILE, PSEUDO_LABEL_FILE

log = logging.getLogger(__name__)
_written_in_this_process = 0


@dataclass(frozen=True)
class PseudoCase:
    """One volume to pseudo-label: its id (output folder name) and image (NIfTI or DICOM dir)."""

    case_id: str
    image_path: Path


@dataclass
class GenerationSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # finished by an earlier run
    scores: dict[str, float] = field(default_factory=dict)  # case id -> volume consensus
    seconds: float = 0.0


def _case_id_of(path: Path) -> str:
    name = strip_nifti_suffix(path.name) if is_nifti(path) else path.name
    return name[:-5] if name.endswith("_0000") else name


def cases_from_inputs(inputs: Sequence[str | PathLike], schema: LabelSchema) -> list[PseudoCase]:
    """Cases to label, sorted by id. Each input is a FLARE dataset folder (its unlabeled cases),
    a NIfTI file, a folder of NIfTI files, or a DICOM series folder (case id = folder name)."""
    found: dict[str, Path] = {}
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(path, "input not found", "pass a dataset folder, NIfTI files or a folder of them")
        if path.is_dir() and ((path / "imagesTr").is_dir() or (path / "unlabeled").is_dir()):
            pairs = [(c.case_id, c.image_path) for c in discover_cases(path, schema)
                     if c.split == "unlabeled"]
        elif path.is_dir() and any(is_nifti(p) for p in path.iterdir()):
            pairs = [(_case_id_of(p), p) for p in sorted(path.iterdir())
                     if is_nifti(p) and not p.name.startswith(".")]
        else:
            pairs = [(_case_id_of(path), path)]
        for case_id, image in pairs:
            if case_id in found and found[case_id] != image:
                raise InputError(image, f"case id {case_id!r} also names {found[case_id]}",
                                 "give every input file a unique name")
            found[case_id] = image
    if not found:
        raise InputError(", ".join(map(str, inputs)), "no volumes to pseudo-label",
                         "pass a dataset folder with unlabeled/ cases or NIfTI files")
    return [PseudoCase(c, found[c]) for c in sorted(found)]


def shard(cases: Sequence[PseudoCase], rank: int, world_size: int) -> list[PseudoCase]:
    """Rank ``rank``'s share: ``sorted(cases)[rank::world_size]`` (disjoint, covering)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(None, f"rank {rank} is outside a world of {world_size} processes",
                         "use 0 <= rank < world size")
    return sorted(cases, key=lambda c: c.case_id)[rank::world_size]


def read_record(case_dir: Path) -> dict[str, Any] | None:
    """A finished case's raw case.json, or None (absent or unreadable: the case is redone).
    ``slicevos.pseudo.folder.read_case_record`` is the strict reader for finished folders."""
    try:
        return json.loads((case_dir / CASE_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _settings(case: PseudoCase, schema: LabelSchema, members: list[dict[str, Any]]) -> dict[str, Any]:
    """What a finished case must match to be reused."""
    return {"case_id": case.case_id, "image": str(case.image_path.absolute()),
            "image_fingerprint": source_fingerprint(case.image_path), "schema": schema.name,
            "members": [m["name"] for m in members], "member_sources": members}


def is_finished(case_dir: Path, settings: dict[str, Any]) -> bool:
    record = read_record(case_dir)
    return record is not None and all(record.get(k) == v for k, v in settings.items())


def _fsync_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    with open(path, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_case(out_dir: Path, settings: dict[str, Any], member_labels: np.ndarray,
               volume: Volume, schema: LabelSchema, variant: str) -> dict[str, Any]:
    """Fuse, score and write one case atomically (see the module doc); returns its record."""
    global _written_in_this_process
    case_id = settings["case_id"]
    final, tmp = out_dir / case_id, out_dir / f".{case_id}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names = np.array(settings["members"], dtype=np.str_)
        _fsync_write(tmp / MEMBERS_FILE,
                     lambda f: np.savez_compressed(f, labels=member_labels, member_names=names))
        limit = os.environ.get(TEST_EXIT_AFTER_ENV)
        if limit is not None and _written_in_this_process >= int(limit):
            os._exit(75)
        fused = fuse_members(member_labels, schema.num_classes)
        save_labels(fused, volume.geometry, tmp / PSEUDO_LABEL_FILE)
        score = consensus_score(member_labels, schema.ids, variant, fused=fused)
        record = {**settings, "consensus": score.to_dict()}
        _fsync_write(tmp / CASE_FILE, lambda f: f.write(json.dumps(record, indent=1)), "w")
        if final.exists():  # stale (no case.json) or made by other members: replaced
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _written_in_this_process += 1
    return record


def generate_pseudo_labels(
    cases: Sequence[PseudoCase], predict: Callable[[Volume], np.ndarray],
    members: list[dict[str, Any]], out_dir: str | PathLike, schema: LabelSchema,
    variant: str = DEFAULT_VARIANT, rank: int = 0, world_size: int = 1, progress: bool = True,
) -> GenerationSummary:
    """Pseudo-label this rank's shard of ``cases`` into ``out_dir`` (resumable; module doc).

    ``predict(volume)`` returns the members' labels uint8 (M, D, H, W) on the volume's
    canonical grid, in the order of ``members`` (JSON-ready dicts with a unique ``"name"``,
    plus whatever identifies the member: checkpoint file, flip).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    names = [m["name"] for m in members]
    if len(set(names)) != len(names) or len(names) < 2:
        raise InputError(None, f"members {names} must be at least 2, with unique names",
                         "pass 2 or more checkpoints, or add TTA flips")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temp_dirs(out):
        log.info("removed unfinished %s from an interrupted run", path.name)
    summary = GenerationSummary()
    mine = shard(cases, rank, world_size)
    for case in tqdm(mine, desc=f"pseudo-labels rank {rank}", unit="case", position=rank,
                     disable=not progress):
        settings = _settings(case, schema, members)
        if is_finished(out / case.case_id, settings):
            summary.skipped.append(case.case_id)
            summary.scores[case.case_id] = read_record(out / case.case_id)["consensus"]["volume"]
            continue
        volume = load_volume(case.image_path)
        labels = predict(volume)
        expected = (len(members), *volume.shape)
        if labels.dtype != np.uint8 or labels.shape != expected:
            raise ValueError(f"predict returned {labels.dtype} {labels.shape}, expected uint8 {expected}")
        record = write_case(out, settings, labels, volume, schema, variant)
        summary.written.append(case.case_id)
        summary.scores[case.case_id] = record["consensus"]["volume"]
    summary.seconds = time.perf_counter() - start
    return summary
