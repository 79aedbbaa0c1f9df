"""The canonical in-memory volume and the geometry needed to write results back.

Contract (all of slicevos relies on it):

- ``Volume.hu`` is a float32 array of shape ``(D, H, W)``: D axial slices, H rows, W columns.
- Axis 0 runs inferior -> superior (slice 0 is the most inferior), axis 1 runs anterior ->
  posterior (row 0 is anterior), axis 2 runs patient right -> left (column 0 is the patient's
  right, as a radiologist views an axial slice). In nibabel axis codes this is ``("S", "P", "L")``.
- Values are Hounsfield units with the file's scaling (NIfTI ``scl_slope``/``scl_inter``, DICOM
  RescaleSlope/RescaleIntercept) applied.
- ``Volume.spacing`` is ``(dz, dy, dx)`` in millimetres, in the same axis order.
- ``Geometry`` holds the file's own array shape and affine (voxel index -> RAS+ mm, the NIfTI
  convention), and the axis permutation/flips between the file's array and the canonical one,
  so a label volume made on the canonical grid is written back in the input's exact geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")


@dataclass(frozen=True)
class Geometry:
    """Where the canonical (D, H, W) grid sits in the input file.

    ``affine`` maps the *file* array's voxel indices to RAS+ mm; ``shape`` is the file array's
    shape. ``header`` is the source NIfTI header (None for DICOM input), kept so written labels
    carry the same qform/sform codes.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    header: nib.Nifti1Header | None = field(default=None, compare=False, repr=False)

    @property
    def _file_to_canonical(self) -> np.ndarray:
        src = ornt.io_orientation(self.affine)
        return ornt.ornt_transform(src, ornt.axcodes2ornt(CANONICAL_AXCODES))

    def to_canonical(self, file_array: np.ndarray) -> np.ndarray:
        """File-ordered 3D array -> canonical (D, H, W) (a view where possible)."""
        return ornt.apply_orientation(file_array, self._file_to_canonical)

    def from_canonical(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical (D, H, W) array -> the file's own axis order and flips."""
        back = ornt.ornt_transform(
            ornt.axcodes2ornt(CANONICAL_AXCODES), ornt.io_orientation(self.affine)
        )
        out = ornt.apply_orientation(canonical, back)
        if out.shape != self.shape:
            raise ValueError(f"canonical array {canonical.shape} does not match geometry {self.shape}")
        return out

    def slice_index(self, index: int) -> int:
        """A slice index along the file's axial axis (the ``k`` a viewer such as ITK-SNAP or
        3D Slicer shows) -> the canonical (inferior -> superior) slice index, and back: the
        map is its own inverse."""
        transform = self._file_to_canonical
        file_axis = int(np.flatnonzero(transform[:, 0] == 0)[0])
        depth = self.shape[file_axis]
        return depth - 1 - int(index) if transform[file_axis, 1] < 0 else int(index)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.to_canonical(np.empty(self.shape, np.uint8)).shape)

    @property
    def canonical_affine(self) -> np.ndarray:
        """Affine of the canonical (D, H, W) array (voxel index -> RAS+ mm)."""
        inv = ornt.inv_ornt_aff(self._file_to_canonical, self.shape)
        return self.affine @ inv

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (dz, dy, dx) in mm along the canonical axes."""
        zooms = np.sqrt((self.canonical_affine[:3, :3] ** 2).sum(axis=0))
        return tuple(float(z) for z in zooms)

    def to_dict(self) -> dict[str, Any]:
        return {"affine": np.asarray(self.affine).tolist(), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        return cls(np.asarray(data["affine"], dtype=np.float64), tuple(data["shape"]))

    def same_grid(self, other: Geometry, atol_mm: float = 1e-3) -> bool:
        return tuple(self.shape) == tuple(other.shape) and np.allclose(
            self.affine, other.affine, atol=atol_mm, rtol=0
        )


@dataclass
class Volume:
    """A CT volume on the canonical grid; see the module docstring for the contract."""

    hu: np.ndarray
    geometry: Geometry
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    @property
    def num_slices(self) -> int:
        return int(self.hu.shape[0])
