"""Key slices drawn by a person (semi-automatic mode).

Two forms:

- a label NIfTI in which only some slices are drawn: every slice holding a non-zero label is a
  key slice (undrawn slices are all 0);
- a fully drawn label NIfTI plus slice indices (``--key-slices 10,40,80``): those slices are the
  keys. Indices count along the file's own slice axis (the voxel index ``k`` a viewer such as
  ITK-SNAP or 3D Slicer shows for the axial direction), and are converted to the canonical
  inferior -> superior order here.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from nibabel import orientations as ornt

from slicevos.errors import InputError
from slicevos.io.labels import LabelSchema
from slicevos.io.nifti import load_labels
from slicevos.io.volume import CANONICAL_AXCODES, Geometry, Volume


def file_slice_to_canonical(geometry: Geometry, index: int) -> int:
    """Index along the file axis that becomes canonical axis 0 (inferior -> superior) -> the
    canonical slice index."""
    transform = ornt.ornt_transform(ornt.io_orientation(geometry.affine),
                                    ornt.axcodes2ornt(CANONICAL_AXCODES))
    file_axis = int(np.flatnonzero(transform[:, 0] == 0)[0])
    depth = geometry.shape[file_axis]
    return depth - 1 - index if transform[file_axis, 1] < 0 else index


def parse_slice_list(text: str) -> list[int]:
    """``"10,40,80"`` -> [10, 40, 80] (InputError naming ``--key-slices`` otherwise)."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InputError("--key-slices", f"{text!r} is not a comma-separated list of slice "
                         "indices", "pass e.g. --key-slices 10,40,80") from None
    if not values:
        raise InputError("--key-slices", "no slice index given", "pass e.g. --key-slices 10,40,80")
    return values


def read_key_slices(path: str | PathLike, volume: Volume, schema: LabelSchema | None = None,
                    slice_indices: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Key masks {canonical z: labels (H, W) uint8} from a label file on the image's grid.

    Without ``slice_indices`` the drawn (non-empty) slices are the keys; with them, those
    slices (file indices, see the module doc) of a fully drawn file are. Raises ``InputError``
    when the grid differs from the image, a value is not in ``schema``, no slice is drawn, or an
    index is outside the volume.
    """
    path = Path(path)
    labels, geometry = load_labels(path, reference=volume, schema=schema)
    if slice_indices is None:
        drawn = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
        if len(drawn) == 0:
            raise InputError(path, "key file has no drawn slice (every voxel is 0)",
                             "draw the organs on a few slices, or pass a fully drawn file with "
                             "--key-slices")
        return {int(z): labels[z].copy() for z in drawn}
    depth = len(labels)
    keys = {}
    for index in slice_indices:
        if not 0 <= index < depth:
            raise InputError(path, f"key slice {index} is outside the file's {depth} slices",
                             f"pass --key-slices between 0 and {depth - 1}")
        z = file_slice_to_canonical(geometry, int(index))
        keys[z] = labels[z].copy()
    return keys
