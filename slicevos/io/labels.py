"""Label schemas (class id -> name, NSD tolerance, scoring rules) and label remapping.

A schema lists the foreground classes; id 0 is always background. FLARE22 has 13 organs,
FLARE23 adds the tumor (id 14). Other schemas (e.g. TotalSegmentator v2) are mapped onto a
schema through a YAML file, see ``configs/labels/totalseg_v2_to_flare.yaml``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import yaml

from slicevos.errors import InputError


@dataclass(frozen=True)
class Code:
    """A coded concept: code value, coding scheme designator (``SCT``: SNOMED CT), meaning."""

    value: str
    scheme: str
    meaning: str


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


# SNOMED CT codes as pydicom.sr.codedict.codes.SCT spells them (tests/test_dicom_seg.py checks
# each); the categories are from DICOM CID 7150, the lateralities from CID 244
ANATOMICAL_STRUCTURE = _sct("91723000", "Anatomical Structure")
ABNORMAL_STRUCTURE = _sct("49755003", "Morphologically Abnormal Structure")
TISSUE = _sct("85756007", "Tissue")
RIGHT, LEFT = _sct("24028007", "Right"), _sct("7771000", "Left")


@dataclass(frozen=True)
class SegmentCodes:
    """What a class is, as a DICOM-SEG segment says it: the segmented property category and
    type, and the type's laterality modifier (right/left kidney = Kidney + Right/Left)."""

    category: Code
    type: Code
    laterality: Code | None = None


GENERIC_CODES = SegmentCodes(TISSUE, TISSUE)  # 3D Slicer's default for an unnamed segment


def _organ(value: str, meaning: str, laterality: Code | None = None) -> SegmentCodes:
    return SegmentCodes(ANATOMICAL_STRUCTURE, _sct(value, meaning), laterality)


@dataclass(frozen=True)
class LabelClass:
    """One foreground class. ``nsd_tolerance_mm`` is the FLARE NSD tolerance; classes with
    ``gt_slices_only`` (tubular structures cut by the field of view) are scored only on the
    axial slices where the ground truth has them. ``one_piece``: the structure is one 3D
    connected component, so post-processing may drop its stray parts (never the parts a
    person drew; ``slicevos.inference.postprocess``); False (the default) keeps every part.
    ``codes``: the DICOM-SEG segment codes (``slicevos.io.dicom_seg``)."""

    id: int
    name: str
    nsd_tolerance_mm: float = 2.0
    gt_slices_only: bool = False
    color: tuple[int, int, int] = (255, 255, 0)
    one_piece: bool = False
    codes: SegmentCodes = GENERIC_CODES


@dataclass(frozen=True)
class LabelSchema:
    name: str
    classes: tuple[LabelClass, ...]

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids) or any(i <= 0 or i > 255 for i in ids):
            raise ValueError(f"schema {self.name}: class ids must be unique and in 1..255: {ids}")

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def num_classes(self) -> int:
        """Number of network output channels: max id + 1 (background included)."""
        return max(self.ids) + 1

    def by_id(self, class_id: int) -> LabelClass:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(f"schema {self.name} has no class id {class_id}")

    def id_of(self, name: str) -> int:
        for c in self.classes:
            if c.name == name:
                return c.id
        raise KeyError(f"schema {self.name} has no class named {name!r}; known: {self.names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def label_map(self) -> dict[str, str]:
        """id -> name (JSON keys are strings), background included."""
        return {"0": "background", **{str(c.id): c.name for c in self.classes}}

    def check_values(self, labels: np.ndarray, path: str | PathLike | None = None) -> None:
        """Raise InputError if ``labels`` holds ids this schema does not define."""
        present = np.unique(labels)
        unknown = sorted(set(present.tolist()) - {0, *self.ids})
        if unknown:
            raise InputError(
                path,
                f"label values {unknown[:10]} are not in schema {self.name} "
                f"(valid ids: 0..{max(self.ids)})",
                "choose the matching schema (e.g. flare23 for tumor id 14) or convert the labels "
                "with slicevos-convert-labels and a mapping YAML",
            )


# one_piece: solid organs that are one connected structure. Several parts allowed: tumors
# (many lesions), vessels and tubes that the field of view or the missing arch cuts in two
# (aorta, IVC, esophagus), and thin curved organs whose reference labels themselves come in
# several parts on the shared real volumes (pancreas, duodenum). docs: postprocessing rules.
_FLARE_ORGANS: tuple[LabelClass, ...] = (
    LabelClass(1, "liver", 5.0, color=(220, 60, 60), one_piece=True,
               codes=_organ("10200004", "Liver")),
    LabelClass(2, "right_kidney", 3.0, color=(60, 180, 75), one_piece=True,
               codes=_organ("64033007", "Kidney", RIGHT)),
    LabelClass(3, "spleen", 3.0, color=(0, 130, 200), one_piece=True,
               codes=_organ("78961009", "Spleen")),
    LabelClass(4, "pancreas", 5.0, color=(255, 225, 25), codes=_organ("15776009", "Pancreas")),
    LabelClass(5, "aorta", 2.0, gt_slices_only=True, color=(245, 130, 48),
               codes=_organ("15825003", "Aorta")),
    LabelClass(6, "inferior_vena_cava", 2.0, gt_slices_only=True, color=(145, 30, 180),
               codes=_organ("64131007", "Inferior vena cava")),
    LabelClass(7, "right_adrenal_gland", 2.0, color=(70, 240, 240), one_piece=True,
               codes=_organ("23451007", "Adrenal gland", RIGHT)),
    LabelClass(8, "left_adrenal_gland", 2.0, color=(240, 50, 230), one_piece=True,
               codes=_organ("23451007", "Adrenal gland", LEFT)),
    LabelClass(9, "gallbladder", 2.0, color=(210, 245, 60), one_piece=True,
               codes=_organ("28231008", "Gallbladder")),
    LabelClass(10, "esophagus", 3.0, gt_slices_only=True, color=(250, 190, 212),
               codes=_organ("32849002", "Esophagus")),
    LabelClass(11, "stomach", 5.0, color=(0, 128, 128), one_piece=True,
               codes=_organ("69695003", "Stomach")),
    LabelClass(12, "duodenum", 7.0, color=(220, 190, 255), codes=_organ("38848004", "Duodenum")),
    LabelClass(13, "left_kidney", 3.0, color=(170, 110, 40), one_piece=True,
               codes=_organ("64033007", "Kidney", LEFT)),
)
_TUMOR = LabelClass(14, "tumor", 2.0, color=(255, 0, 0),
                    codes=SegmentCodes(ABNORMAL_STRUCTURE, _sct("108369006", "Neoplasm")))

FLARE22 = LabelSchema("flare22", _FLARE_ORGANS)
FLARE23 = LabelSchema("flare23", (*_FLARE_ORGANS, _TUMOR))
# Class-agnostic: every id 1..255 is an object (e.g. the 117 TotalSegmentator classes), for
# caches that train mask propagation, where any labelled structure is a track to follow; its
# DICOM-SEG segments are generic (GENERIC_CODES: Tissue).
OBJECTS = LabelSchema("objects", tuple(LabelClass(i, f"object_{i}") for i in range(1, 256)))
SCHEMAS: dict[str, LabelSchema] = {s.name: s for s in (FLARE22, FLARE23, OBJECTS)}


def get_schema(name: str | LabelSchema) -> LabelSchema:
    if isinstance(name, LabelSchema):
        return name
    try:
        return SCHEMAS[name.lower()]
    except KeyError:
        raise InputError(
            None, f"unknown label schema {name!r}", f"use one of {sorted(SCHEMAS)}"
        ) from None


@dataclass(frozen=True)
class LabelMapping:
    """Maps the ids of a source schema onto a target schema; unlisted source ids become 0."""

    source: str
    target: LabelSchema
    source_to_target: Mapping[int, int]
    source_names: Mapping[int, str]

    @classmethod
    def from_yaml(cls, path: str | PathLike) -> LabelMapping:
        """YAML: ``source: NAME``, ``target: flare22|flare23`` and ``classes:`` a list of
        ``{source_id: int, source_name: str, target: <target class name>}``."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "label mapping file not found", "check the path")
        try:
            raw = yaml.safe_load(path.read_text())
            target = get_schema(raw["target"])
            pairs, names = {}, {}
            for entry in raw["classes"]:
                sid = int(entry["source_id"])
                pairs[sid] = target.id_of(entry["target"])
                names[sid] = str(entry.get("source_name", sid))
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as err:
            raise InputError(
                path, f"invalid label mapping ({err})",
                "see configs/labels/totalseg_v2_to_flare.yaml for the format",
            ) from None
        return cls(str(raw.get("source", path.stem)), target, pairs, names)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Remap an integer label array; returns uint8 with the same shape."""
        if labels.size and (labels.min() < 0 or labels.max() > 65535):
            raise ValueError(f"label values must be in 0..65535, got {labels.min()}..{labels.max()}")
        lut = np.zeros(max(int(labels.max(initial=0)), *self.source_to_target) + 1, np.uint8)
        for sid, tid in self.source_to_target.items():
            lut[sid] = tid
        return lut[labels.astype(np.intp, copy=False)]


def write_label_map(path: str | PathLike, schema: LabelSchema,
                    key_slices: list[int] | None = None) -> None:
    """Write the id -> name JSON sidecar atomically. ``key_slices``: the slices (file
    indices) a person drew or vouched for, empty ones included; a label file with this list
    given back to ``slicevos-infer --keys`` or ``slicevos-label --labels`` has exactly those
    keys (``slicevos.inference.user_keys``)."""
    from slicevos.io.atomic import atomic_write_bytes

    payload: dict = {"schema": schema.name, "labels": schema.label_map()}
    if key_slices is not None:
        payload["key_slices"] = sorted(int(z) for z in key_slices)
    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2) + "\n").encode())
