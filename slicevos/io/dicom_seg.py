"""DICOM-SEG output: a label volume as a DICOM Segmentation object over its source CT series,
for PACS, OHIF and 3D Slicer (QuantitativeReporting / DCMQI). highdicom is an optional
dependency (``pip install "slicevos[dicomseg]"``).

The SEG is BINARY (1 bit per pixel, uncompressed, lossless) with one segment per class present
in the labels (absent classes are left out), numbered 1..n in class id order. Each segment's
label is the class name, its codes and colour come from the schema (``LabelClass.codes``,
``LabelClass.color`` as CIELab). Frame ``k`` of the segmentation references slice ``k`` of the
series as ``slicevos.io.dicom`` orders it (by position along the slice normal), so each
frame lies on the source image at the same position. See docs/interoperability.md.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import slicevos
from slicevos.errors import InputError, warn_input
from slicevos.io.atomic import atomic_path
from slicevos.io.dicom import DicomSlice, read_series_headers
from slicevos.io.labels import Code, LabelClass, LabelSchema
from slicevos.io.nifti import strip_nifti_suffix
from slicevos.io.volume import Geometry, Volume

# highdicom logs every module it copies at INFO; the tools log at INFO
logging.getLogger("highdicom").setLevel(logging.WARNING)

SEG_SUFFIX = "_seg.dcm"
INSTALL_FIX = 'install the DICOM-SEG extra: pip install "slicevos[dicomseg]"'
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
SERIES_NUMBER = 1000
# what a SEG needs to reference each source image (type 1 in the SEG)
REFERENCE_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                        "FrameOfReferenceUID")
# type 2 patient/study attributes copied from the source: left empty where the source lacks them
_COPIED_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                 "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_NOT_REFERABLE_FIX = ("export the series with its UIDs from the PACS or scanner (an anonymiser "
                      "that blanks UIDs breaks the references), or use the NIfTI labels")


def dicom_seg_path(label_path: str | PathLike) -> Path:
    """``labels.nii.gz`` -> ``labels_seg.dcm`` beside it."""
    label_path = Path(label_path)
    return label_path.with_name(strip_nifti_suffix(label_path.name) + SEG_SUFFIX)


def _import_highdicom() -> ModuleType:
    try:
        import highdicom
    except ImportError:
        raise InputError(None, "DICOM-SEG needs highdicom, which is not installed",
                         INSTALL_FIX) from None
    return highdicom


@dataclass(frozen=True)
class SegSource:
    """A CT series a DICOM-SEG can reference: ``slices[k]`` is slice ``k`` of the file array
    (columns i, rows j, slices k) of ``geometry``, as ``load_dicom_series`` reads it."""

    folder: Path
    slices: tuple[DicomSlice, ...]
    geometry: Geometry

    @property
    def datasets(self) -> list[Any]:
        return [s.header for s in self.slices]


def read_seg_source(source: Volume | str | PathLike) -> SegSource:
    """The series of a DICOM folder (or of a ``Volume`` read from one), checked to have what a
    DICOM-SEG needs: study, series, SOP and frame-of-reference UIDs in every file, one study
    and frame of reference, CT modality. Raises ``InputError`` naming the file and the
    attribute, or, for a ``Volume`` read from NIfTI, saying there is no DICOM source."""
    if isinstance(source, Volume):
        volume, folder = source, None if source.path is None else Path(source.path)
    else:
        volume, folder = None, Path(source)
    if folder is None or not folder.is_dir():
        raise InputError(folder, "a DICOM-SEG needs a DICOM series as input (it references "
                         "the DICOM images it segments), but the scan is not a DICOM series "
                         "folder", "pass the DICOM series folder as input, or drop --dicom-seg "
                         "(the NIfTI labels are written anyway)")
    slices, geometry = read_series_headers(folder)
    if volume is not None and not geometry.same_grid(volume.geometry):
        raise InputError(folder, "the series' geometry differs from the volume that was "
                         "segmented", "do not change the folder while slicevos runs")
    for s in slices:
        _check_referable(s)
    for name in ("StudyInstanceUID", "FrameOfReferenceUID"):
        values = {str(s.header.get(name)) for s in slices}
        if len(values) > 1:
            raise InputError(folder, f"the images have {len(values)} different {name}s",
                             "keep one CT series per folder")
    for s in slices:  # in memory only: what highdicom copies must be there
        for name in _COPIED_TYPE2:
            if name not in s.header:
                setattr(s.header, name, "")
        if not _positive(s.header.get("SliceThickness")):
            s.header.SliceThickness = round(geometry.spacing[0], 6)  # the slice step
    return SegSource(folder, tuple(slices), geometry)


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _check_referable(s: DicomSlice) -> None:
    missing = [n for n in REFERENCE_ATTRIBUTES if not str(s.header.get(n, "") or "").strip()]
    if missing:
        raise InputError(s.path, f"has no {', '.join(missing)} (absent or empty), which a "
                         "DICOM-SEG needs to reference the image", _NOT_REFERABLE_FIX)
    modality = str(s.header.get("Modality", "") or "")
    if modality != "CT":
        raise InputError(s.path, f"Modality is {modality or 'missing'!r}, not CT: a DICOM-SEG "
                         "is written only over a CT image series", _NOT_REFERABLE_FIX)


def seg_source_for(volume: Volume, wanted: bool | None) -> SegSource | None:
    """The series a DICOM-SEG of ``volume`` will reference, or None for no DICOM-SEG.

    ``wanted`` True (``--dicom-seg``): whatever prevents a DICOM-SEG (NIfTI input, highdicom
    not installed, a series without the UIDs) is an ``InputError``. None (automatic): a DICOM
    series input gets one when highdicom is installed and the series allows it; otherwise a
    one-line warning, and None. False (``--no-dicom-seg``): None.
    """
    is_dicom = volume.path is not None and Path(volume.path).is_dir()
    if wanted is False or (wanted is None and not is_dicom):
        return None
    try:
        source = read_seg_source(volume)  # for NIfTI input: "needs a DICOM series"
        _import_highdicom()
        return source
    except InputError as err:
        if wanted:
            raise
        warn_input(err.path, f"{err.problem}; no DICOM-SEG is written", err.fix)
        return None


def save_dicom_seg(
    labels: np.ndarray,
    source: SegSource | Volume | str | PathLike,
    path: str | PathLike,
    schema: LabelSchema,
    *,
    algorithm_type: str = "SEMIAUTOMATIC",
    series_description: str = "slicevos segmentation",
    series_number: int = SERIES_NUMBER,
) -> Path | None:
    """Write canonical (D, H, W) ``labels`` (class ids of ``schema``) as a DICOM-SEG over the
    series ``source`` (a ``SegSource``, a DICOM folder, or a ``Volume`` read from one) to
    ``path``, atomically. New series and instance UIDs each time. Returns ``path``, or None
    when no class is present: a SEG needs at least one segment, so nothing is written and a
    file left at ``path`` by an earlier run is removed (it would contradict the labels)."""
    hd = _import_highdicom()
    if algorithm_type not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type must be one of {ALGORITHM_TYPES}, got {algorithm_type!r}")
    path = Path(path)
    src = source if isinstance(source, SegSource) else read_seg_source(source)
    if labels.shape != src.geometry.canonical_shape:
        raise ValueError(f"labels {labels.shape} do not match the series "
                         f"{src.geometry.canonical_shape}")
    schema.check_values(labels)
    present = set(np.unique(labels).tolist())
    classes = [c for c in schema.classes if c.id in present]
    if not classes:
        path.unlink(missing_ok=True)
        return None
    lut = np.zeros(256, np.uint8)
    for number, c in enumerate(classes, start=1):
        lut[c.id] = number
    file_array = src.geometry.from_canonical(lut[labels.astype(np.uint8, copy=False)])
    frames = np.ascontiguousarray(file_array.transpose(2, 1, 0))  # (slices k, rows j, columns i)
    descriptions = [_segment(hd, n, c, algorithm_type) for n, c in enumerate(classes, start=1)]
    first = src.slices[0].header
    with warnings.catch_warnings():  # the source's own names, e.g. a one-part PatientName
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        seg = hd.seg.Segmentation(
            source_images=src.datasets, pixel_array=frames, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=hd.UID(),
            series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="slicevos", manufacturer_model_name="slicevos",
            software_versions=slicevos.__version__, device_serial_number="1",
            content_label="SLICEVOS", content_description=f"{schema.name} labels",
            series_description=series_description,
            specific_character_set=first.get("SpecificCharacterSet") or None)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def _concept(hd: ModuleType, code: Code) -> Any:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _segment(hd: ModuleType, number: int, cls: LabelClass, algorithm_type: str) -> Any:
    from pydicom.sr.codedict import codes

    algorithm = (None if algorithm_type == "MANUAL" else hd.AlgorithmIdentificationSequence(
        name="slicevos", family=codes.cid7162.ArtificialIntelligence,
        version=slicevos.__version__))
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=cls.name,
        segmented_property_category=_concept(hd, cls.codes.category),
        segmented_property_type=_concept(hd, cls.codes.type), algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*cls.color))
    if cls.codes.laterality is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _concept(hd, cls.codes.laterality)]
    return description


def load_dicom_seg_labels(path: str | PathLike, source: SegSource | Volume | str | PathLike,
                          schema: LabelSchema) -> np.ndarray:
    """Read a DICOM-SEG over the series ``source`` back as canonical (D, H, W) uint8 class ids.

    A segment is the schema class of its label, else the class with its property type and
    laterality codes. Frames are matched to the series' slices by SOP Instance UID; slices
    the SEG leaves out are empty. Raises ``InputError`` for a file that is not a DICOM-SEG, a
    SEG of another series, or a segment that is no class of ``schema``.
    """
    hd = _import_highdicom()
    path = Path(path)
    src = source if isinstance(source, SegSource) else read_seg_source(source)
    seg = _read_seg(hd, path)
    series = str(src.slices[0].header.SeriesInstanceUID)
    uids = [str(s.header.SOPInstanceUID) for s in src.slices]
    references = seg.get_source_image_uids()
    referenced = {str(series_uid) for _, series_uid, _ in references}
    if series not in referenced:
        raise InputError(path, f"the DICOM-SEG references series {sorted(referenced)}, not "
                         f"{series} in {src.folder}", "pass the series the SEG was made on")
    absent = {str(sop) for _, _, sop in references} - set(uids)
    if absent:
        raise InputError(path, f"the DICOM-SEG references {len(absent)} image(s) that are not "
                         f"in {src.folder}", "pass the complete series the SEG was made on")
    lut = np.zeros(max(seg.segment_numbers) + 1, np.uint8)
    for number in seg.segment_numbers:
        lut[number] = _class_of(seg.get_segment_description(number), schema, path)
    try:
        frames = seg.get_pixels_by_source_instance(uids, combine_segments=True,
                                                   assert_missing_frames_are_empty=True)
    except (ValueError, RuntimeError) as err:
        raise InputError(path, f"cannot map the DICOM-SEG's frames onto the series ({err})",
                         "pass the series the SEG was made on") from None
    file_array = lut[frames].transpose(2, 1, 0)  # (columns i, rows j, slices k)
    return np.ascontiguousarray(src.geometry.to_canonical(file_array))


def _read_seg(hd: ModuleType, path: Path) -> Any:
    if not path.is_file():
        raise InputError(path, "DICOM-SEG file not found", "check the path")
    try:
        return hd.seg.segread(path)
    except Exception as err:  # pydicom and highdicom raise many kinds on a bad file
        raise InputError(path, f"cannot read as DICOM-SEG ({type(err).__name__}: {err})",
                         "pass a DICOM Segmentation file (e.g. <labels>_seg.dcm)") from None


def _class_of(description: Any, schema: LabelSchema, path: Path) -> int:
    """The schema class of a segment: by label, else by property type and laterality codes."""
    label = str(description.segment_label)
    if label in schema.names:
        return schema.id_of(label)
    item = description.SegmentedPropertyTypeCodeSequence[0]
    modifiers = item.get("SegmentedPropertyTypeModifierCodeSequence") or []
    laterality = str(modifiers[0].CodeValue) if modifiers else None
    matches = [c.id for c in schema.classes if c.codes.type.value == str(item.CodeValue)
               and (c.codes.laterality.value if c.codes.laterality else None) == laterality]
    if len(matches) != 1:
        raise InputError(path, f"segment {description.segment_number} {label!r} "
                         f"({item.CodeMeaning}) is no single class of schema {schema.name}",
                         "name the segment after a class of the schema, or pass the matching "
                         "schema")
    return matches[0]
