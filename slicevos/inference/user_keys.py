"""Key slices drawn by a person (semi-automatic mode).

Which slices of a label file are keys, in this order of precedence:

1. ``--key-slices 10,40,80``: those slices of a fully drawn file;
2. the ``key_slices`` list in the file's JSON sidecar (``<name>.json``, the label map that
   ``slicevos-label``'s Save and ``slicevos-infer`` write): exactly those slices, empty ones
   included, so a saved result given back as keys has the keys it was made from;
3. otherwise every slice holding a non-zero label (undrawn slices are all 0).

``--empty-slices 3,97`` adds slices a person looked at and found none of the organs on: keys
with an all-zero mask, which end the organs there. Indices count along the file's own slice
axis (the voxel index ``k`` a viewer such as ITK-SNAP or 3D Slicer shows for the axial
direction) and are converted to the canonical inferior -> superior order here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from slicevos.errors import InputError
from slicevos.io.labels import LabelSchema
from slicevos.io.nifti import label_map_path, load_labels
from slicevos.io.volume import Volume


def parse_slice_list(text: str, option: str = "--key-slices") -> list[int]:
    """``"10,40,80"`` -> [10, 40, 80] (InputError naming ``option`` otherwise)."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InputError(option, f"{text!r} is not a comma-separated list of slice "
                         "indices", f"pass e.g. {option} 10,40,80") from None
    if not values:
        raise InputError(option, "no slice index given", f"pass e.g. {option} 10,40,80")
    return values


def listed_key_slices(path: str | PathLike) -> list[int] | None:
    """The ``key_slices`` (file indices) of the JSON sidecar of label file ``path``, or None
    when there is no sidecar or it lists none."""
    sidecar = label_map_path(path)
    if not sidecar.is_file():
        return None
    try:
        listed = json.loads(sidecar.read_text()).get("key_slices")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
        raise InputError(sidecar, f"label map is not a JSON object ({err})",
                         "fix the file or remove it") from None
    if listed is None:
        return None
    if not isinstance(listed, list) or not all(isinstance(v, int) for v in listed):
        raise InputError(sidecar, f"key_slices must be a list of slice indices, got "
                         f"{str(listed)[:60]}", "write e.g. \"key_slices\": [10, 40, 80]")
    return listed


def read_key_slices(path: str | PathLike, volume: Volume, schema: LabelSchema | None = None,
                    slice_indices: Sequence[int] | None = None,
                    empty_slices: Sequence[int] = ()) -> dict[int, np.ndarray]:
    """Key masks {canonical z: labels (H, W) uint8} from a label file on the image's grid,
    chosen as the module doc says. ``slice_indices`` and ``empty_slices`` are file indices.

    Raises ``InputError`` when the grid differs from the image, a value is not in ``schema``,
    no slice is a key, an index is outside the volume, or an empty slice has labels drawn.
    """
    path = Path(path)
    labels, geometry = load_labels(path, reference=volume, schema=schema)
    depth = len(labels)
    chosen = slice_indices if slice_indices is not None else listed_key_slices(path)
    source = "--key-slices" if slice_indices is not None else label_map_path(path)
    if chosen is None:
        drawn = np.flatnonzero(labels.reshape(depth, -1).any(axis=1))
        keys = {int(z): labels[z].copy() for z in drawn}
    else:
        canonical = (geometry.slice_index(_check_index(i, depth, source)) for i in chosen)
        keys = {z: labels[z].copy() for z in canonical}
    for index in empty_slices:
        z = geometry.slice_index(_check_index(index, depth, "--empty-slices"))
        if labels[z].any():
            raise InputError(path, f"slice {index} is marked empty (--empty-slices) but has "
                             "labels drawn", "drop it from --empty-slices, or erase it")
        keys[z] = np.zeros_like(labels[z])
    if not keys:
        raise InputError(path, "key file has no drawn slice (every voxel is 0)",
                         "draw the organs on a few slices, pass a fully drawn file with "
                         "--key-slices, or mark looked-at empty slices with --empty-slices")
    return dict(sorted(keys.items()))


def _check_index(index: int, depth: int, source: str | Path) -> int:
    if not 0 <= int(index) < depth:
        raise InputError(source, f"key slice {index} is outside the file's {depth} slices",
                         f"pass slice indices between 0 and {depth - 1}")
    return int(index)
