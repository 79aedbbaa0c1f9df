"""Write the accepted pseudo-labeled cases as a dataset folder for the next round.

The output is the FLARE layout read by :mod:`slicevos.data.dataset_folder`:

- ``imagesTr/<case>_0000.nii.gz`` (``.nii`` kept as is; a DICOM series as the folder
  ``imagesTr/<case>/``): a symlink to the source image (a copy where links fail);
- ``labelsTr/<case>.nii.gz``: the fused pseudo-label, or for a partially accepted case the
  fused label with only its confident organs kept (others -> 0);
- ``annotations.yaml``: ``case: [class ids]`` for every labeled case that does not annotate
  every class (the base dataset's partial cases included). An accepted pseudo-label annotates
  only the classes its file contains: an organ that the members did not find (or that lost the
  vote everywhere) is *unannotated*, not background, so the partial-label loss does not teach
  the next round that the organ is absent (on the quality-spread phantoms the tiny members miss
  the adrenal glands in every volume);
- ``unlabeled/``: every other known image (base unlabeled + rejected pseudo cases), symlinked;
- ``scores.csv`` and ``scores_histogram.png`` (see :mod:`slicevos.pseudo.report`).

With ``base_dataset`` its labeled cases (and their annotations) come first, so the result is
the next round's labeled set = base labeled + accepted. The folder is built beside ``out_dir``
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from slicevos.data.dataset_folder import (
    IMAGES_DIR,
    LABELS_DIR,
    UNLABELED_DIR,
    CaseSource,
    discover_cases,
)
from slicevos.errors import InputError
from slicevos.io.labels import LabelSchema
from slicevos.io.nifti import is_nifti, load_labels, save_labels, strip_nifti_suffix
from slicevos.pseudo.filtering import Decision
from slicevos.pseudo.folder import CaseRecord, read_case_record
from slicevos.pseudo.report import CSV_FILE, HISTOGRAM_FILE, write_histogram, write_scores_csv

ANNOTATIONS_FILE = "annotations.yaml"


def link_or_copy(src: Path, dst: Path) -> None:
    """Symlink ``dst`` -> ``src`` (absolute); copy the file or folder where links fail."""
    src = src.resolve()
    try:
        dst.symlink_to(src, target_is_directory=src.is_dir())
    except OSError:
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


def image_name(case_id: str, image: Path) -> str:
    """``<case>_0000.nii.gz`` / ``<case>_0000.nii`` for NIfTI files, ``<case>`` for a DICOM
    folder."""
    if image.is_dir():
        return case_id
    return f"{case_id}_0000{image.name[len(strip_nifti_suffix(image.name)):]}"


def check_output_dir(out_dir: str | PathLike, inputs: Sequence[str | PathLike],
                     overwrite: bool) -> None:
    """Raise InputError if ``out_dir`` overlaps an input folder, or exists without ``overwrite``."""
    out_dir = Path(out_dir)
    out = out_dir.resolve()
    for path in inputs:
        inp = Path(path).resolve()
        if out == inp or out in inp.parents or inp in out.parents:
            raise InputError(out_dir, f"output overlaps the input folder {path}",
                             "write the dataset to a folder outside the inputs")
    if out_dir.exists() and not overwrite:
        raise InputError(out_dir, "output folder exists",
                         "pass --overwrite or choose another folder")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _one_schema(records: Sequence[CaseRecord]) -> LabelSchema:
    names = sorted({r.schema.name for r in records})
    if len(names) != 1:
        raise InputError(None, f"cases use several label schemas {names}",
                         "filter the cases of one schema at a time")
    return records[0].schema


def _add_image(root: Path, folder: str, case_id: str, image: Path, where: Path) -> None:
    if not image.exists():
        raise InputError(where, f"source image {image} of case {case_id} not found",
                         "restore the image or fix the path")
    if not image.is_dir() and not is_nifti(image):
        raise InputError(where, f"source image {image} of case {case_id} is neither NIfTI nor a "
                         "DICOM folder", "convert it to .nii.gz")
    link_or_copy(image, root / folder / image_name(case_id, image))


def _add_pseudo_label(root: Path, record: CaseRecord, decision: Decision) -> tuple[int, ...]:
    """Write the case's label file; returns the classes it annotates (those of
    ``decision.class_ids`` that the fused label contains)."""
    dest = root / LABELS_DIR / f"{record.case_id}.nii.gz"
    if not record.label_path.is_file():
        raise InputError(record.label_path, "fused pseudo-label missing although case.json marks "
                         "the case complete", "rerun generation for this case")
    labels, geometry = load_labels(record.label_path, schema=record.schema)
    in_file = set(np.unique(labels).tolist())
    annotated = tuple(c for c in decision.class_ids if c in in_file)
    if not decision.partial:
        shutil.copyfile(record.label_path, dest)
        return annotated
    kept = np.where(np.isin(labels, annotated), labels, 0).astype(np.uint8)
    save_labels(kept, geometry, dest)
    return annotated


def _build(root: Path, decisions: Sequence[Decision], records: dict[str, CaseRecord],
           base_cases: list[CaseSource], schema: LabelSchema, cutoff: float | None) -> None:
    for folder in (IMAGES_DIR, LABELS_DIR, UNLABELED_DIR):
        (root / folder).mkdir(parents=True)
    annotations: dict[str, list[int]] = {}
    labeled = set()
    for case in (c for c in base_cases if c.split == "labeled"):
        _add_image(root, IMAGES_DIR, case.case_id, case.image_path, case.image_path)
        suffix = case.label_path.name[len(strip_nifti_suffix(case.label_path.name)):]
        shutil.copyfile(case.label_path, root / LABELS_DIR / f"{case.case_id}{suffix}")
        if tuple(case.annotated_class_ids) != schema.ids:
            annotations[case.case_id] = list(case.annotated_class_ids)
        labeled.add(case.case_id)
    for d in tqdm([d for d in decisions if d.accepted], desc="accepted", unit="case"):
        record = records[d.case_id]
        _add_image(root, IMAGES_DIR, d.case_id, record.image, record.case_dir)
        annotated = _add_pseudo_label(root, record, d)
        if annotated != schema.ids:
            annotations[d.case_id] = list(annotated)
        labeled.add(d.case_id)
    unlabeled = {c.case_id: (c.image_path, c.image_path)
                 for c in base_cases if c.split == "unlabeled"}
    for d in decisions:
        if not d.accepted:
            unlabeled.setdefault(d.case_id, (records[d.case_id].image, records[d.case_id].case_dir))
    for case_id, (image, where) in sorted(unlabeled.items()):
        if case_id not in labeled:
            _add_image(root, UNLABELED_DIR, case_id, image, where)
    if annotations:
        text = yaml.safe_dump({k: annotations[k] for k in sorted(annotations)}, sort_keys=False,
                              default_flow_style=None)
        (root / ANNOTATIONS_FILE).write_text(text)
    write_scores_csv(root / CSV_FILE, decisions, schema)
    write_histogram(root / HISTOGRAM_FILE, decisions, cutoff)
    discover_cases(root, schema)  # the result must read back as a dataset folder


def write_accepted_dataset(
    decisions: Sequence[Decision], pseudo_dir: str | PathLike, out_dir: str | PathLike,
    base_dataset: str | PathLike | None = None, *, overwrite: bool = False,
    cutoff: float | None = None,
) -> Path:
    """Write the accepted cases of ``pseudo_dir`` (plus ``base_dataset``'s cases) as a dataset
    folder at ``out_dir`` (see module doc). ``cutoff`` is drawn on the histogram. Refuses an
    existing ``out_dir`` unless ``overwrite``; never writes into the inputs. Returns ``out_dir``."""
    pseudo_dir, out_dir = Path(pseudo_dir), Path(out_dir)
    if not pseudo_dir.is_dir():
        raise InputError(pseudo_dir, "pseudo-label folder not found", "check the path")
    inputs = [pseudo_dir] + ([Path(base_dataset)] if base_dataset is not None else [])
    check_output_dir(out_dir, inputs, overwrite)
    if not decisions:
        raise InputError(pseudo_dir, "no cases to write", "check the pseudo-label folder")
    records = {d.case_id: read_case_record(pseudo_dir / d.case_id) for d in decisions}
    schema = _one_schema(list(records.values()))
    base_cases = discover_cases(base_dataset, schema) if base_dataset is not None else []
    clash = sorted({c.case_id for c in base_cases if c.split == "labeled"}
                   & {d.case_id for d in decisions if d.accepted})
    if clash:
        raise InputError(base_dataset, f"accepted pseudo cases {clash[:5]} are already labeled "
                         "in the base dataset", "pseudo-label only the unlabeled cases")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(tmp, decisions, records, base_cases, schema, cutoff)
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if out_dir.exists() or out_dir.is_symlink():
            _remove(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
