"""``load_volume``: one entry point for a NIfTI file or a DICOM series folder."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from slicevos.errors import InputError
from slicevos.io.nifti import is_nifti, load_volume_nifti
from slicevos.io.volume import Volume


def load_volume(path: str | PathLike) -> Volume:
    """Load a CT volume (NIfTI file or DICOM series folder) on the canonical (D, H, W) grid."""
    path = Path(path)
    if path.is_dir():
        from slicevos.io.dicom import load_dicom_series

        return load_dicom_series(path)
    if not path.exists():
        raise InputError(path, "file not found", "check the path and the file name")
    if is_nifti(path):
        return load_volume_nifti(path)
    raise InputError(path, f"unsupported file type {path.suffix!r}",
                     "pass a .nii/.nii.gz file or a folder holding one DICOM series")
