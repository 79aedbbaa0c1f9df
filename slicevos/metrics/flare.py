"""Per-case, per-class DSC and NSD with the FLARE rules, and folder-level evaluation.

Rules (FLARE22/23): each class has its own NSD tolerance in mm (``LabelClass.nsd_tolerance_mm``).
Classes with ``gt_slices_only`` (aorta, IVC, esophagus: tubes cut by the field of view) are
scored only on the axial slices (canonical axis 0) from the first to the last slice where the
ground truth has the class; if the ground truth has none of it the whole volume is used. Both
empty -> DSC 1, NSD 1; exactly one empty -> 0, 0. Spacing comes from the ground-truth header.

The official script crops ``z_lower:z_upper`` and so drops the last ground-truth slice; here the
range is inclusive, as the rule states.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from slicevos.errors import InputError, warn_input
from slicevos.io.atomic import atomic_path, atomic_write_bytes
from slicevos.io.labels import LabelClass, LabelSchema
from slicevos.io.nifti import NIFTI_SUFFIXES, load_labels, strip_nifti_suffix
from slicevos.metrics.overlap import dice
from slicevos.metrics.surface import normalized_surface_dice


@dataclass(frozen=True)
class ClassScore:
    class_id: int
    class_name: str
    dsc: float
    nsd: float


def resolve_classes(
    schema: LabelSchema, classes: Iterable[int | str] | None = None
) -> tuple[LabelClass, ...]:
    """Schema classes selected by id or name (all when ``classes`` is None)."""
    if classes is None:
        return schema.classes
    chosen = []
    for item in classes:
        try:
            is_id = isinstance(item, int) or str(item).isdigit()
            chosen.append(schema.by_id(int(item) if is_id else schema.id_of(str(item))))
        except KeyError:
            raise InputError(None, f"class {item!r} is not in schema {schema.name}",
                             f"use ids {list(schema.ids)} or names {list(schema.names)}") from None
    return tuple(chosen)


def _scoring_box(
    gt_box: tuple[slice, ...], pred_box: tuple[slice, ...], gt_slices_only: bool
) -> tuple[slice, ...]:
    """Union of the two bounding boxes; along axis 0 only the GT's slices for tube classes."""
    box = [slice(min(g.start, p.start), max(g.stop, p.stop))
           for g, p in zip(gt_box, pred_box, strict=True)]
    if gt_slices_only:
        box[0] = gt_box[0]
    return tuple(box)


def score_case(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    spacing: Sequence[float],
    schema: LabelSchema,
    classes: Iterable[int | str] | None = None,
) -> dict[str, ClassScore]:
    """Score one case: canonical uint8 label maps (D, H, W) on the same grid, ``spacing``
    ``(dz, dy, dx)`` mm. Returns class name -> :class:`ClassScore`, in schema order."""
    if gt_labels.shape != pred_labels.shape or gt_labels.ndim != 3:
        raise ValueError(f"expected two 3D label maps of one shape, got {gt_labels.shape} and "
                         f"{pred_labels.shape}")
    selected = resolve_classes(schema, classes)
    top = max(c.id for c in selected)
    gt_boxes = ndimage.find_objects(gt_labels, max_label=top)
    pred_boxes = ndimage.find_objects(pred_labels, max_label=top)
    scores = {}
    for cls in selected:
        gt_box, pred_box = gt_boxes[cls.id - 1], pred_boxes[cls.id - 1]
        if gt_box is None and pred_box is None:
            dsc = nsd = 1.0
        elif gt_box is None or pred_box is None:
            dsc = nsd = 0.0
        else:
            box = _scoring_box(gt_box, pred_box, cls.gt_slices_only)
            gt_mask, pred_mask = gt_labels[box] == cls.id, pred_labels[box] == cls.id
            dsc = dice(gt_mask, pred_mask)
            nsd = normalized_surface_dice(gt_mask, pred_mask, spacing, cls.nsd_tolerance_mm)
        scores[cls.name] = ClassScore(cls.id, cls.name, dsc, nsd)
    return scores


def case_name(path: str | PathLike) -> str:
    """``case.nii.gz`` -> ``case``."""
    return strip_nifti_suffix(Path(path).name)


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))


def match_cases(pred: str | PathLike, gt: str | PathLike) -> list[tuple[str, Path, Path]]:
    """Pair predictions with ground truths: ``[(case, pred_path, gt_path), ...]``.

    Either two files, or two folders matched by case name (``GT/case.nii.gz`` or the FLARE
    layout ``GT/labelsTr/case.nii.gz`` <-> ``PRED/case.nii.gz``; a prediction named after the
    image, ``case_0000.nii.gz``, is accepted too).
    """
    pred, gt = Path(pred), Path(gt)
    for path in (pred, gt):
        if not path.exists():
            raise InputError(path, "not found", "check the path")
    if pred.is_file() and gt.is_file():
        return [(case_name(gt), pred, gt)]
    if pred.is_file() != gt.is_file():
        raise InputError(pred if pred.is_file() else gt, "is a file while the other input is a "
                         "folder", "pass two label files or two folders")
    gt_files = _nifti_files(gt)
    if not gt_files and (gt / "labelsTr").is_dir():
        gt_files = _nifti_files(gt / "labelsTr")
    if not gt_files:
        raise InputError(gt, "no .nii/.nii.gz ground-truth files (nor a labelsTr/ folder of them)",
                         "pass the folder that holds the reference label files")
    pred_by_case = {case_name(p): p for p in _nifti_files(pred)}
    pairs, missing = [], []
    for gt_path in gt_files:
        case = case_name(gt_path)
        found = pred_by_case.pop(case, None) or pred_by_case.pop(f"{case}_0000", None)
        if found is None:
            missing.append(case)
        else:
            pairs.append((case, found, gt_path))
    if missing:
        raise InputError(pred, f"no prediction for {len(missing)} of {len(gt_files)} cases "
                         f"(first: {missing[0]}, expected {pred / (missing[0] + '.nii.gz')})",
                         "predict every case, or evaluate against a folder with only those cases")
    if pred_by_case:
        warn_input(pred, f"{len(pred_by_case)} predictions have no ground truth and are ignored "
                   f"(e.g. {sorted(pred_by_case)[0]})", "name each prediction after its ground-truth case")
    return pairs


def evaluate_case(
    pred_path: str | PathLike,
    gt_path: str | PathLike,
    schema: LabelSchema,
    classes: Iterable[int | str] | None = None,
) -> dict[str, ClassScore]:
    """Read both label files (prediction must be on the GT grid) and score them."""
    gt_labels, gt_geometry = load_labels(gt_path, schema=schema)
    pred_labels, _ = load_labels(pred_path, reference=gt_geometry, schema=schema)
    return score_case(gt_labels, pred_labels, gt_geometry.spacing, schema, classes)


def _evaluate_job(
    case: str, pred_path: Path, gt_path: Path, schema: LabelSchema, class_ids: tuple[int, ...]
) -> tuple[str, dict[str, ClassScore]]:
    """Process-pool task (an ``InputError`` pickles, so it reaches the parent intact)."""
    return case, evaluate_case(pred_path, gt_path, schema, class_ids)


def evaluate_folders(
    pred: str | PathLike,
    gt: str | PathLike,
    schema: LabelSchema,
    classes: Iterable[int | str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every case (see :func:`match_cases`); returns ``(rows, summary)``.

    ``rows``: one dict per case and class (``case, class_id, class_name, dsc, nsd``), sorted by
    case then schema order. ``summary``: see :func:`summarise`.
    """
    selected = resolve_classes(schema, classes)
    class_ids = tuple(c.id for c in selected)
    jobs = [(case, p, g, schema, class_ids) for case, p, g in match_cases(pred, gt)]
    results: dict[str, Any] = {}
    bar = tqdm(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            futures = [pool.submit(_evaluate_job, *job) for job in jobs]
            for future in as_completed(futures):
                case, result = future.result()
                results[case] = result
                bar.update()
    else:
        for job in jobs:
            case, result = _evaluate_job(*job)
            results[case] = result
            bar.update()
    bar.close()
    rows = []
    for case in sorted(results):
        result = results[case]
        rows.extend({"case": case, **asdict(score)} for score in result.values())
    return rows, summarise(rows, schema, selected)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarise(
    rows: list[dict[str, Any]], schema: LabelSchema, classes: Sequence[LabelClass]
) -> dict[str, Any]:
    """Per-class mean/std (population std) of DSC and NSD over cases, the overall mean (mean of
    the class means, as FLARE reports it) and each case's mean over classes."""
    cases = sorted({r["case"] for r in rows})
    per_class = {}
    for cls in classes:
        mine = [r for r in rows if r["class_id"] == cls.id]
        if not mine:
            continue
        dsc_mean, dsc_std = _mean_std([r["dsc"] for r in mine])
        nsd_mean, nsd_std = _mean_std([r["nsd"] for r in mine])
        per_class[cls.name] = {
            "id": cls.id, "nsd_tolerance_mm": cls.nsd_tolerance_mm,
            "gt_slices_only": cls.gt_slices_only, "num_cases": len(mine),
            "dsc_mean": dsc_mean, "dsc_std": dsc_std, "nsd_mean": nsd_mean, "nsd_std": nsd_std,
        }
    per_case = {}
    for case in cases:
        mine = [r for r in rows if r["case"] == case]
        per_case[case] = {"dsc": float(np.mean([r["dsc"] for r in mine])),
                          "nsd": float(np.mean([r["nsd"] for r in mine]))}
    mean = {key: float(np.mean([c[f"{key}_mean"] for c in per_class.values()])) if per_class
            else math.nan for key in ("dsc", "nsd")}
    return {"schema": schema.name, "num_cases": len(cases), "classes": per_class,
            "mean": mean, "cases": per_case}


CSV_COLUMNS = ("case", "class_id", "class_name", "dsc", "nsd")


def write_results(
    out_dir: str | PathLike, rows: list[dict[str, Any]], summary: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``metrics_per_case.csv`` and ``summary.json`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / "metrics_per_case.csv", out_dir / "summary.json"
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()}
                         for r in rows)
    atomic_write_bytes(json_path, (json.dumps(summary, indent=2) + "\n").encode())
    return csv_path, json_path
