"""Find the cases of a dataset folder in the FLARE layout.

::

    DATASET/
      imagesTr/<case>_0000.nii.gz    labeled CT (a case without a label file counts as unlabeled)
      labelsTr/<case>.nii.gz         its labels (schema ids, same grid as the image)
      unlabeled/<case>_0000.nii.gz   unlabeled CT (.nii too), or unlabeled/<case>/ = DICOM series
      annotations.yaml               optional: classes annotated in partially labeled cases

``annotations.yaml`` (or ``.yml`` / ``.json``) maps case ids to the classes drawn in that case,
by name or id, e.g. ``case_0003: [tumor]`` or ``case_0004: [1, 2, 3]``. A labeled case not listed
is fully annotated (every class of the schema).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

from slicevos.errors import InputError, warn_input
from slicevos.io.labels import LabelSchema
from slicevos.io.nifti import is_nifti, strip_nifti_suffix

IMAGES_DIR, LABELS_DIR, UNLABELED_DIR = "imagesTr", "labelsTr", "unlabeled"
ANNOTATION_FILES = ("annotations.yaml", "annotations.yml", "annotations.json")
_CHANNEL = re.compile(r"_(\d{4})$")


@dataclass(frozen=True)
class CaseSource:
    """One case of a dataset folder: where its image (file or DICOM folder) and labels are, and
    which schema class ids its labels cover (empty for unlabeled cases)."""

    case_id: str
    image_path: Path
    label_path: Path | None
    annotated_class_ids: tuple[int, ...]

    @property
    def split(self) -> str:
        return "labeled" if self.label_path is not None else "unlabeled"


def _images_in(folder: Path) -> dict[str, Path]:
    """case id -> image path for NIfTI files (``<case>_0000.nii[.gz]``) and DICOM folders."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            case_id = path.name
        elif is_nifti(path):
            case_id = strip_nifti_suffix(path.name)
            channel = _CHANNEL.search(case_id)
            if channel and channel.group(1) != "0000":
                raise InputError(path, f"channel suffix _{channel.group(1)}: CT cases have one "
                                 "channel, _0000", "remove the extra channel files")
            case_id = _CHANNEL.sub("", case_id)
        else:
            warn_input(path, "not a NIfTI file or DICOM folder; it is ignored",
                       "move it out of the dataset folder")
            continue
        if case_id in found:
            raise InputError(path, f"case {case_id!r} appears twice (also {found[case_id].name})",
                             "keep one image per case")
        found[case_id] = path
    return found


def _labels_in(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {strip_nifti_suffix(p.name): p for p in sorted(folder.iterdir())
            if is_nifti(p) and not p.name.startswith(".")}


def find_annotations_file(dataset_dir: Path) -> Path | None:
    present = [dataset_dir / n for n in ANNOTATION_FILES if (dataset_dir / n).is_file()]
    if len(present) > 1:
        raise InputError(dataset_dir, f"several annotation files {[p.name for p in present]}",
                         "keep one annotations.yaml (or .json)")
    return present[0] if present else None


def _class_id(entry: Any, schema: LabelSchema, path: Path, case_id: str) -> int:
    if isinstance(entry, bool) or not isinstance(entry, int | str):
        raise InputError(path, f"case {case_id}: class entry {entry!r} is neither a name nor an id",
                         f"list class names {list(schema.names)} or ids {list(schema.ids)}")
    if isinstance(entry, int):
        if entry not in schema.ids:
            raise InputError(path, f"case {case_id}: class id {entry} is not in schema "
                             f"{schema.name}", f"use ids {list(schema.ids)}")
        return entry
    if entry not in schema.names:
        raise InputError(path, f"case {case_id}: unknown class name {entry!r} in schema "
                         f"{schema.name}", f"use names {list(schema.names)}")
    return schema.id_of(entry)


def load_annotations(
    path: str | PathLike, schema: LabelSchema, labeled_cases: set[str] | frozenset[str]
) -> dict[str, tuple[int, ...]]:
    """Read an annotations file -> {case id: sorted annotated class ids}.

    Every case must be one of ``labeled_cases``; every class a name or id of ``schema``.
    """
    path = Path(path)
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse ({err})".replace("\n", " "), "fix the syntax") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise InputError(path, f"expected a mapping case -> class list, got {type(raw).__name__}",
                         "write e.g. 'case_0003: [tumor]'")
    out: dict[str, tuple[int, ...]] = {}
    for case_id, entries in raw.items():
        case_id = str(case_id)
        if case_id not in labeled_cases:
            raise InputError(path, f"unknown case {case_id!r} (no {IMAGES_DIR}/ image with a "
                             f"{LABELS_DIR}/ label file)", "fix the case name or remove the entry")
        if not isinstance(entries, list) or not entries:
            raise InputError(path, f"case {case_id}: expected a non-empty list of classes, got "
                             f"{entries!r}", "write e.g. 'case_0003: [tumor]'")
        out[case_id] = tuple(sorted({_class_id(e, schema, path, case_id) for e in entries}))
    return out


def discover_cases(dataset_dir: str | PathLike, schema: LabelSchema) -> list[CaseSource]:
    """All cases of a FLARE-layout folder, labeled first, each group sorted by case id."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found", "check the path")
    if not (root / IMAGES_DIR).is_dir() and not (root / UNLABELED_DIR).is_dir():
        raise InputError(root, f"no {IMAGES_DIR}/ or {UNLABELED_DIR}/ folder",
                         f"use the FLARE layout: {IMAGES_DIR}/<case>_0000.nii.gz, "
                         f"{LABELS_DIR}/<case>.nii.gz, {UNLABELED_DIR}/<case>_0000.nii.gz")
    images = _images_in(root / IMAGES_DIR)
    unlabeled = _images_in(root / UNLABELED_DIR)
    labels = _labels_in(root / LABELS_DIR)
    for case_id in sorted(set(images) & set(unlabeled)):
        raise InputError(unlabeled[case_id], f"case {case_id!r} is also in {IMAGES_DIR}/",
                         "give each case a unique name")
    for case_id in sorted(set(labels) - set(images)):
        warn_input(labels[case_id], f"label file has no image {IMAGES_DIR}/{case_id}_0000.nii.gz"
                   "; it is ignored", "add the image, or move the label file out")
    labeled_ids = frozenset(set(images) & set(labels))
    annotations_path = find_annotations_file(root)
    partial = (load_annotations(annotations_path, schema, labeled_ids)
               if annotations_path is not None else {})
    cases = [CaseSource(c, images[c], labels[c], partial.get(c, schema.ids))
             for c in sorted(labeled_ids)]
    cases += [CaseSource(c, images[c], None, ()) for c in sorted(set(images) - labeled_ids)]
    cases += [CaseSource(c, unlabeled[c], None, ()) for c in sorted(unlabeled)]
    if not cases:
        raise InputError(root, "no cases found", f"put CT files in {IMAGES_DIR}/ or {UNLABELED_DIR}/")
    return cases


def source_fingerprint(path: Path) -> dict[str, int]:
    """Size and mtime of a file, or file count, total size and newest mtime of a folder."""
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.rglob("*")) if p.is_file()]
        return {"files": len(stats), "size": sum(s.st_size for s in stats),
                "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_cache_location(dataset_dir: Path, cache_dir: Path) -> None:
    """Refuse a cache folder that is the dataset folder or lies in its input folders."""
    data, cache = dataset_dir.resolve(), cache_dir.resolve()
    inputs = (IMAGES_DIR, LABELS_DIR, UNLABELED_DIR)
    if cache == data or (data in cache.parents and cache.relative_to(data).parts[0] in inputs):
        raise InputError(cache_dir, "cache folder is the dataset folder or inside its inputs",
                         "choose a cache folder outside the dataset folder")
