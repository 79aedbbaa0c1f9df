"""Read one DICOM CT series (a folder of single-slice files) into a canonical ``Volume``.

Slices are ordered by their position along the slice normal (the cross product of the row and
column direction cosines in ImageOrientationPatient), never by InstanceNumber or file name, and
the slice step comes from ImagePositionPatient, not SliceThickness. The file array is built as
(columns i, rows j, slices k), the dcm2niix/NIfTI convention, with an affine in RAS+ (DICOM
patient coordinates are LPS), so labels saved for a DICOM input open over the same scan in any
NIfTI viewer. pydicom is an optional dependency (``pip install "slicevos[dicom]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from slicevos.errors import InputError, warn_input
from slicevos.io.nifti import check_finite, warn_if_not_hu
from slicevos.io.volume import Geometry, Volume

INSTALL_FIX = 'install the DICOM extra: pip install "slicevos[dicom]"'
ORIENTATION_ATOL = 1e-3  # direction cosines that differ by less are the same orientation
DUPLICATE_MM = 0.01  # slices closer than this along the normal are duplicates
GAP_FACTOR = 1.5  # a step this many times the median step means missing slices
UNIFORM_TOL = 0.1  # max deviation of a slice from the uniform grid, in slice steps
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class DicomSlice:
    """One image file of a series and its header."""

    path: Path
    header: Any  # pydicom Dataset read with stop_before_pixels

    @property
    def position(self) -> np.ndarray:
        return np.asarray(self.header.ImagePositionPatient, dtype=np.float64)

    @property
    def orientation(self) -> np.ndarray:
        return np.asarray(self.header.ImageOrientationPatient, dtype=np.float64)

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)")


def load_dicom_series(folder: str | PathLike) -> Volume:
    """Read the CT series in ``folder`` (its files only, not subfolders) as float32 HU (D, H, W).

    Non-DICOM files and DICOM files without an image position (DICOMDIR, reports) are ignored.
    Raises ``InputError`` for a folder holding several series, missing or duplicate slices,
    non-uniform spacing, or pixel data that cannot be decoded.
    """
    folder = Path(folder)
    slices, geometry = read_series_headers(folder)
    pydicom = _import_pydicom(folder)
    stack = np.stack([_read_hu(s, pydicom) for s in slices])  # (k, rows j, columns i)
    file_array = stack.transpose(2, 1, 0)  # (columns i, rows j, slices k)
    check_finite(file_array, folder)
    warn_if_not_hu(file_array, folder)
    hu = np.ascontiguousarray(geometry.to_canonical(file_array), dtype=np.float32)
    return Volume(hu=hu, geometry=geometry, path=folder)


def read_series_headers(folder: str | PathLike) -> tuple[list[DicomSlice], Geometry]:
    """The headers (no pixel data) of the CT series in ``folder`` in slice order, and its
    geometry: ``slices[k]`` is slice ``k`` of the file array (columns i, rows j, slices k) that
    ``load_dicom_series`` builds. Raises ``InputError`` as ``load_dicom_series`` does."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM folder not found", "pass the folder holding the series' files")
    pydicom = _import_pydicom(folder)
    slices = _read_headers(folder, pydicom)
    _check_one_series(folder, slices)
    slices, step = _sort_slices(folder, slices)
    first = slices[0].header
    shape = (int(first.Columns), int(first.Rows), len(slices))
    return slices, Geometry(_ras_affine(slices[0], step), shape, header=None)


def _import_pydicom(folder: Path) -> ModuleType:
    try:
        import pydicom
    except ImportError:
        raise InputError(folder, "reading DICOM needs pydicom, which is not installed",
                         INSTALL_FIX) from None
    return pydicom


def _read_headers(folder: Path, pydicom: ModuleType) -> list[DicomSlice]:
    """Headers of the CT image files in ``folder``; other files are skipped."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images, other_modalities, multiframe = [], {}, 0
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=False)
        except pydicom.errors.InvalidDicomError:
            continue  # not DICOM (.txt, thumbnails, ...)
        except (EOFError, OSError, ValueError, KeyError) as err:
            raise InputError(path, f"DICOM header is truncated or corrupt ({type(err).__name__}: "
                             f"{err})", "re-export or re-copy the file, or remove it") from None
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            multiframe += 1
            continue
        if not all(tag in header for tag in ("ImagePositionPatient", "ImageOrientationPatient",
                                             "Rows", "Columns")):
            continue  # DICOMDIR, structured reports, secondary captures
        modality = str(header.get("Modality", "CT") or "CT")
        if modality != "CT":
            other_modalities[modality] = other_modalities.get(modality, 0) + 1
            continue
        images.append(DicomSlice(path, header))
    if other_modalities and images:
        found = ", ".join(f"{n} {m}" for m, n in other_modalities.items())
        warn_input(folder, f"skipped {found} image(s) that are not CT; only the CT images are "
                   "loaded", "keep one CT series per folder")
    if not images:
        raise InputError(folder, _no_images_problem(files, other_modalities, multiframe),
                         _no_images_fix(folder, multiframe))
    return images


def _no_images_problem(files: list[Path], other_modalities: dict[str, int], multiframe: int) -> str:
    problem = f"no single-frame DICOM CT images among its {len(files)} file(s)"
    if other_modalities:
        problem += " (found " + ", ".join(f"{n} {m}" for m, n in other_modalities.items()) + ")"
    if multiframe:
        problem += f" ({multiframe} multi-frame file(s), which are not supported)"
    return problem


def _no_images_fix(folder: Path, multiframe: int) -> str:
    if multiframe:
        return "convert the series to NIfTI (e.g. dcm2niix -z y FOLDER) and pass the .nii.gz"
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    fix = "pass the folder that directly holds one CT series' DICOM files"
    if subfolders:
        fix += f" (subfolders here: {', '.join(subfolders[:5])}{', ...' if len(subfolders) > 5 else ''})"
    return fix


def _check_one_series(folder: Path, slices: list[DicomSlice]) -> None:
    """One SeriesInstanceUID, one orientation, one image size and pixel spacing."""
    by_uid: dict[str, list[DicomSlice]] = {}
    for s in slices:
        by_uid.setdefault(s.series_uid, []).append(s)
    fix = ("put each series in its own folder, or pass the folder of the series you want "
           "(SeriesInstanceUID tells them apart)")
    if len(by_uid) > 1:
        shown = "; ".join(f"{uid} ({_describe(group)})" for uid, group in list(by_uid.items())[:3])
        more = f"; and {len(by_uid) - 3} more" if len(by_uid) > 3 else ""
        raise InputError(folder, f"holds {len(by_uid)} DICOM series: {shown}{more}", fix)
    first = slices[0]
    for s in slices[1:]:
        for name, a, b in (
            ("ImageOrientationPatient", first.orientation, s.orientation),
            ("Rows x Columns", (first.header.Rows, first.header.Columns),
             (s.header.Rows, s.header.Columns)),
            ("PixelSpacing", _pixel_spacing(first), _pixel_spacing(s)),
        ):
            if not np.allclose(a, b, atol=ORIENTATION_ATOL, rtol=0):
                raise InputError(folder, f"images differ in {name}: {list(np.round(a, 4))} in "
                                 f"{first.path.name} vs {list(np.round(b, 4))} in {s.path.name} "
                                 "(several series, or a localizer, in one folder)", fix)


def _describe(group: list[DicomSlice]) -> str:
    description = str(group[0].header.get("SeriesDescription", "") or "")
    return f"{len(group)} images" + (f", {description!r}" if description else "")


def _pixel_spacing(s: DicomSlice) -> np.ndarray:
    """(row spacing, column spacing) in mm: PixelSpacing order."""
    return np.asarray(s.header.get("PixelSpacing", (1.0, 1.0)), dtype=np.float64)


def _normal(s: DicomSlice) -> np.ndarray:
    iop = s.orientation
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def _sort_slices(folder: Path, slices: list[DicomSlice]) -> tuple[list[DicomSlice], np.ndarray]:
    """Slices ordered along the normal and the LPS vector from one slice to the next."""
    normal = _normal(slices[0])
    along = np.array([s.position @ normal for s in slices])
    order = np.argsort(along, kind="stable")
    slices, along = [slices[i] for i in order], along[order]
    if len(slices) == 1:
        header = slices[0].header
        thickness = header.get("SliceThickness") or header.get("SpacingBetweenSlices") or 1.0
        return slices, normal * float(thickness)
    steps = np.diff(along)
    dup = np.flatnonzero(steps < DUPLICATE_MM)
    if dup.size:
        pairs = ", ".join(f"{slices[i].path.name} and {slices[i + 1].path.name} at "
                          f"{along[i]:.2f} mm" for i in dup[:3])
        raise InputError(folder, f"{dup.size} duplicate slice position(s): {pairs}",
                         "remove the duplicate files (two acquisitions or a copied file?)")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        where = ", ".join(f"{along[i]:.2f} to {along[i + 1]:.2f} mm" for i in gaps[:5])
        raise InputError(folder, f"missing slices: {gaps.size} gap(s) larger than the slice step "
                         f"of {median:.3g} mm, between positions {where}",
                         "export the complete series (every slice) into the folder")
    positions = np.array([s.position for s in slices])
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    grid = positions[0] + np.arange(len(slices))[:, None] * step
    off = np.linalg.norm(positions - grid, axis=1)
    if off.max() > UNIFORM_TOL * median:
        worst = int(off.argmax())
        raise InputError(folder, f"non-uniform slice spacing: steps range {steps.min():.3f}.."
                         f"{steps.max():.3f} mm, slice at {along[worst]:.2f} mm is "
                         f"{off[worst]:.3f} mm off a regular grid",
                         "resample the series to uniform spacing (e.g. dcm2niix, then pass the "
                         ".nii.gz) or export it without the irregular slices")
    return slices, step


def _ras_affine(first: DicomSlice, step: np.ndarray) -> np.ndarray:
    """Affine of the (columns i, rows j, slices k) array in RAS+ mm.

    DICOM: position = IPP + i * col_spacing * row_cosine + j * row_spacing * column_cosine.
    """
    iop = first.orientation
    row_spacing, col_spacing = _pixel_spacing(first)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    return LPS_TO_RAS @ lps


def _read_hu(s: DicomSlice, pydicom: ModuleType) -> np.ndarray:
    """One slice's pixels (rows, columns) with RescaleSlope/RescaleIntercept applied."""
    ds = pydicom.dcmread(s.path)
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, EOFError, OSError,
            AttributeError) as err:
        raise InputError(s.path, _decode_problem(ds, err), _decode_fix(ds, pydicom)) from None
    rows, cols = int(ds.Rows), int(ds.Columns)
    if pixels.shape != (rows, cols):
        raise InputError(s.path, f"pixel data has shape {pixels.shape}, expected {rows}x{cols} "
                         "(colour or multi-frame image)", "pass a greyscale CT series")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _decode_problem(ds: Any, err: Exception) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
    reason = " ".join(str(err).split())  # pydicom's messages span lines
    return f"cannot decode pixel data ({getattr(syntax, 'name', syntax)}): {type(err).__name__}: {reason}"


def _decode_fix(ds: Any, pydicom: ModuleType) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    uid = pydicom.uid
    decoders = (
        (uid.JPEG2000TransferSyntaxes, "pylibjpeg pylibjpeg-openjpeg"),
        (uid.JPEGLSTransferSyntaxes, "pylibjpeg pylibjpeg-libjpeg"),
        (uid.JPEGTransferSyntaxes, "pylibjpeg pylibjpeg-libjpeg"),
        (uid.RLETransferSyntaxes, "pylibjpeg pylibjpeg-rle"),
    )
    for syntaxes, packages in decoders:
        if syntax in syntaxes:
            return (f"install its decoder: pip install {packages} (JPEG 2000 is covered by "
                    'pip install "slicevos[dicom]"); if it is installed, the file is corrupt: '
                    "re-export it")
    if "PixelData" not in ds:
        return "the file has no pixel data: remove it from the series folder"
    return "the file is truncated or corrupt: re-export or re-copy it"
