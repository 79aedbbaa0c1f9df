"""NIfTI reading and writing on the canonical grid (see ``slicevos.io.volume``)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from slicevos.errors import InputError, warn_input
from slicevos.io.atomic import atomic_path
from slicevos.io.labels import LabelSchema, write_label_map
from slicevos.io.volume import Geometry, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``case.nii.gz`` / ``case.nii`` -> ``case`` (other names unchanged)."""
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _open(path: Path) -> nib.Nifti1Image:
    if not path.exists():
        raise InputError(path, "file not found", "check the path and the file name")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a NIfTI file", "pass a .nii or .nii.gz file")
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, ValueError) as err:
        raise InputError(
            path, f"cannot read as NIfTI ({type(err).__name__}: {err})",
            "check that the file is a complete .nii/.nii.gz (re-export or re-copy it)",
        ) from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"is a {type(img).__name__}, not NIfTI", "convert it to NIfTI")
    return img


def _raw_voxel_sizes(img: nib.Nifti1Image) -> np.ndarray:
    """``pixdim[1:4]`` as stored in the file: nibabel's header check silently replaces zeros
    by 1 on load, which would hide a missing voxel size behind a guessed 1 mm."""
    with nib.openers.ImageOpener(img.get_filename()) as fobj:
        raw = type(img.header).from_fileobj(fobj, check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


def image_affine(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The voxel -> RAS+ mm affine that nibabel picks (sform if ``sform_code`` > 0, else qform if
    ``qform_code`` > 0, else ``pixdim`` voxel sizes), checked to be usable.

    An unusable affine is an ``InputError``, never a guess: non-finite values, a zero or
    singular 3x3 part (e.g. ``srow_*`` all zero with ``sform_code`` 1), or, when the qform or
    ``pixdim`` is used, a zero voxel size in ``pixdim``. Falling back to ``pixdim`` alone would
    lose the orientation (left/right) and could swap the left and right organs, so the header
    has to be repaired instead. Only the transform actually used is checked: a broken qform
    beside a valid sform is ignored, as by nibabel.
    """
    affine = np.asarray(img.affine, dtype=np.float64)
    header = img.header
    source = ("sform" if int(header["sform_code"]) > 0
              else "qform" if int(header["qform_code"]) > 0 else "pixdim")
    fix = ("repair the header: re-export the scan from its DICOM series, or set the scanner's "
           "affine with nibabel (img.set_sform(affine, code=1); nib.save(img, path))")
    rzs = affine[:3, :3]
    sizes = np.linalg.norm(rzs, axis=0) if np.isfinite(affine).all() else np.zeros(3)
    singular = (not np.isfinite(affine).all() or sizes.min() <= 0
                or abs(np.linalg.det(rzs)) <= 1e-6 * float(np.prod(sizes)))
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    where = {"sform": f"the sform (sform_code {scode})",
             "qform": f"the qform (qform_code {qcode}, sform_code 0)",
             "pixdim": "the header has no qform or sform (both codes 0) and"}[source]
    if singular:
        values = np.array2string(rzs, precision=3, separator=",").replace("\n", "")
        raise InputError(path, f"unusable affine: {where} has a zero, singular or non-finite "
                         f"3x3 part {values}", fix)
    if source != "sform":
        raw = _raw_voxel_sizes(img)
        if not (np.isfinite(raw).all() and (raw != 0).all()):
            raise InputError(path, f"unusable affine: {where} has zero or non-finite pixdim "
                             f"voxel sizes {raw.tolist()}", fix)
    return affine


def _read_array(img: nib.Nifti1Image, path: Path, dtype: type) -> np.ndarray:
    """Read the voxels (scaling applied) and reduce to 3D, with the errors of the contract."""
    shape = img.shape
    if len(shape) < 3:
        raise InputError(
            path, f"image has {len(shape)} dimensions {tuple(shape)}, expected a 3D volume",
            "pass a 3D CT volume (a stack of axial slices), not a single slice",
        )
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise InputError(
            path, f"image is {len(shape)}D {tuple(shape)} with {int(np.prod(shape[3:]))} volumes",
            "split it into one 3D file per volume (e.g. nibabel.four_to_three)",
        )
    if 0 in shape[:3]:
        raise InputError(path, f"image has zero-size axis {tuple(shape)} (no slices)",
                         "pass a volume with at least one slice")
    try:
        data = np.asarray(img.dataobj, dtype=None)
    except (EOFError, OSError, zlib.error, ValueError) as err:
        raise InputError(
            path, f"file is truncated or corrupt ({type(err).__name__}: {err})",
            "re-export or re-copy the file",
        ) from None
    data = data.reshape(shape[:3]).astype(dtype, copy=False)
    return data


def check_finite(data: np.ndarray, path: Path) -> None:
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(path, f"{bad} voxels are NaN or infinite",
                         "replace them (e.g. with -1024 HU for air) before segmentation")


def warn_if_not_hu(data: np.ndarray, path: Path) -> None:
    lo, hi = float(data.min()), float(data.max())
    if lo >= 0:
        warn_input(
            path, f"intensities range {lo:g}..{hi:g} with no negative values, which does not look "
            "like Hounsfield units (air is about -1000 HU)",
            "pass CT in HU: apply the scanner's rescale intercept, do not use 8-bit exports",
        )


def load_volume_nifti(path: str | PathLike) -> Volume:
    """Read a CT NIfTI into a canonical float32 HU volume (D, H, W)."""
    path = Path(path)
    img = _open(path)
    data = _read_array(img, path, np.float32)
    check_finite(data, path)
    warn_if_not_hu(data, path)
    geometry = Geometry(image_affine(img, path), tuple(data.shape), img.header.copy())
    hu = np.ascontiguousarray(geometry.to_canonical(data))
    return Volume(hu=hu, geometry=geometry, path=path)


def load_labels(
    path: str | PathLike,
    reference: Geometry | Volume | None = None,
    schema: LabelSchema | None = None,
) -> tuple[np.ndarray, Geometry]:
    """Read a label NIfTI as a canonical uint8 (D, H, W) array.

    With ``reference`` the label grid must match it (shape and affine); with ``schema`` every
    value must be one of its ids. Returns ``(labels, geometry)``.
    """
    path = Path(path)
    img = _open(path)
    data = _read_array(img, path, np.float64 if img.get_data_dtype().kind == "f" else np.int64)
    check_finite(data, path)
    if np.issubdtype(data.dtype, np.floating) and not np.array_equal(data, np.round(data)):
        raise InputError(path, "label file holds non-integer values",
                         "labels must be integer class ids; check that this is a label file")
    if data.min() < 0 or data.max() > 255:
        raise InputError(path, f"label values range {data.min():g}..{data.max():g}, outside 0..255",
                         "convert the labels to the schema ids with slicevos-convert-labels")
    geometry = Geometry(image_affine(img, path), tuple(data.shape), img.header.copy())
    if reference is not None:
        check_same_grid(reference, geometry, path)
    labels = np.ascontiguousarray(geometry.to_canonical(data.astype(np.uint8)))
    if schema is not None:
        schema.check_values(labels, path)
    return labels, geometry


def check_same_grid(reference: Geometry | Volume, geometry: Geometry, path: Path) -> None:
    ref = reference.geometry if isinstance(reference, Volume) else reference
    if tuple(ref.shape) != tuple(geometry.shape):
        raise InputError(path, f"label shape {tuple(geometry.shape)} differs from image shape "
                         f"{tuple(ref.shape)}", "pair each image with the label made on its grid")
    if not ref.same_grid(geometry):
        diff = float(np.abs(ref.affine - geometry.affine).max())
        raise InputError(path, f"label affine differs from the image affine (max difference "
                         f"{diff:.4g} mm)", "resample the label onto the image grid or fix its "
                         "header (both must come from the same scan)")


def save_labels(
    labels: np.ndarray,
    geometry: Geometry | Volume,
    path: str | PathLike,
    schema: LabelSchema | None = None,
    key_slices: Sequence[int] | None = None,
) -> Path:
    """Write a canonical (D, H, W) label array as uint8 NIfTI in the input's own geometry.

    The file gets the input's shape, axis order and affine. With ``schema`` a JSON sidecar
    (``<name>.json``: id -> name, and ``key_slices``: the canonical ``key_slices`` given here
    as the file's own slice indices) is written beside it. Both writes are atomic.
    """
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label values must fit uint8, got {labels.min()}..{labels.max()}")
    path = save_volume(labels.astype(np.uint8, copy=False), geometry, path)
    if schema is not None:
        geometry = geometry.geometry if isinstance(geometry, Volume) else geometry
        file_keys = (None if key_slices is None else
                     [geometry.slice_index(z) for z in key_slices])
        write_label_map(label_map_path(path), schema, file_keys)
    return path


def save_volume(
    array: np.ndarray,
    geometry: Geometry | Volume,
    path: str | PathLike,
    slope: float = 1.0,
    inter: float = 0.0,
) -> Path:
    """Write a canonical (D, H, W) array (its own dtype) as NIfTI in the input's own geometry.

    Readers see ``stored * slope + inter`` (NIfTI ``scl_slope`` / ``scl_inter``), e.g. a uint8
    map with ``slope=1/255`` reads back as 0..1. The write is atomic.
    """
    geometry = geometry.geometry if isinstance(geometry, Volume) else geometry
    path = Path(path)
    if not is_nifti(path):
        raise InputError(path, "output name must end in .nii or .nii.gz", "rename the output")
    if array.shape != geometry.canonical_shape:
        raise ValueError(f"array {array.shape} does not match the volume {geometry.canonical_shape}")
    file_array = np.ascontiguousarray(geometry.from_canonical(array))
    if geometry.header is not None:
        header = geometry.header.copy()
        header.set_data_dtype(file_array.dtype)
        img = nib.Nifti1Image(file_array, geometry.affine, header)
        qcode, scode = int(header["qform_code"]), int(header["sform_code"])
        img.set_qform(geometry.affine if qcode else None, code=qcode)
        img.set_sform(geometry.affine, code=scode or 1)
    else:
        img = nib.Nifti1Image(file_array, geometry.affine)
        img.set_qform(geometry.affine, code=1)
        img.set_sform(geometry.affine, code=1)
    img.header.set_slope_inter(slope, inter)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def label_map_path(nifti_path: str | PathLike) -> Path:
    """``case.nii.gz`` -> ``case.json`` (the id -> name sidecar)."""
    p = Path(nifti_path)
    return p.with_name(strip_nifti_suffix(p.name) + ".json")
