"""Autosave of a labelling session: a folder beside the output holding every key slice.

``labels.nii.gz`` -> ``labels.label-session/`` with ``state.json`` (which scan, its grid, the
schema, when) and one ``key_<z>.png`` per key slice (canonical z, label ids as grey values).
Each key file is written atomically before the request that drew it returns, so a crash or
``kill -9`` loses no drawn slice. The key files are the truth about which slices are keys;
``state.json`` only says whom they belong to. No pickle: PNG and JSON only.
"""

from __future__ import annotations

import json
import re
import time
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes
from slicevos.io.nifti import strip_nifti_suffix
from slicevos.io.volume import Geometry
from slicevos.labeler.render import decode_label_png, encode_png

_KEY = re.compile(r"^key_(\d{5})\.png$")
_ORGAN_KEY = re.compile(r"^organ_(\d{3})_(\d{5})\.png$")
STATE = "state.json"


def sidecar_folder(output: str | PathLike) -> Path:
    """``dir/labels.nii.gz`` -> ``dir/labels.label-session``."""
    output = Path(output)
    return output.with_name(strip_nifti_suffix(output.name) + ".label-session")


class Sidecar:
    """The autosave folder of one scan (``geometry``: the scan's, to recognise it again)."""

    def __init__(self, folder: Path, scan: Path, geometry: Geometry, schema: str) -> None:
        self.folder = Path(folder)
        self.scan = Path(scan)
        self.geometry = geometry
        self.schema = schema
        self.shape = geometry.canonical_shape

    def _key_path(self, z: int, organ: int | None = None) -> Path:
        return self.folder / (f"key_{z:05d}.png" if organ is None
                              else f"organ_{organ:03d}_{z:05d}.png")

    def exists(self) -> bool:
        return (self.folder / STATE).is_file() or bool(self._key_files())

    def _key_files(self, organs: bool = False) -> dict:
        """{z: path} of the whole-slice keys, or with ``organs`` {(organ, z): path} of the
        per-organ keys."""
        if not self.folder.is_dir():
            return {}
        pattern = _ORGAN_KEY if organs else _KEY
        found = (pattern.match(p.name) for p in self.folder.iterdir())
        return {(int(m.group(1)), int(m.group(2))) if organs else int(m.group(1)):
                self.folder / m.group(0) for m in found if m}

    def load(self) -> dict[int, np.ndarray]:
        """The saved key slices {z: labels (H, W)}; InputError if the folder belongs to another
        scan grid or schema, or a key file is unreadable."""
        state = self.read_state()
        if state:
            same = (list(state.get("shape", [])) == list(self.shape) and np.allclose(
                np.asarray(state.get("affine"), float), self.geometry.affine, atol=1e-3))
            if not same:
                raise InputError(self.folder, "holds a labelling session of another scan grid "
                                 f"(saved for {state.get('scan')})",
                                 "pass another --out, or delete that folder to start over")
            if state.get("schema") != self.schema:
                raise InputError(self.folder, f"holds a session in schema {state.get('schema')}"
                                 f", not {self.schema}", f"pass --schema {state.get('schema')}, "
                                 "or delete that folder to start over")
        return {z: self._read_key(z, path) for z, path in sorted(self._key_files().items())}

    def load_organ_keys(self) -> dict[int, dict[int, np.ndarray]]:
        """The saved per-organ keys {organ: {z: mask (H, W) bool}}."""
        keys: dict[int, dict[int, np.ndarray]] = {}
        for (organ, z), path in sorted(self._key_files(organs=True).items()):
            keys.setdefault(organ, {})[z] = self._read_key(z, path) == organ
        return keys

    def _read_key(self, z: int, path: Path) -> np.ndarray:
        labels = decode_label_png(path.read_bytes(), self.shape[1:])
        if labels is None or z >= self.shape[0]:
            raise InputError(path, "autosaved key slice is unreadable or does not fit the "
                             f"scan ({self.shape[1]}x{self.shape[2]}, {self.shape[0]} slices)",
                             "delete that file (or the whole folder) to go on")
        return labels

    def read_state(self) -> dict[str, Any]:
        path = self.folder / STATE
        if not path.is_file():
            return {}
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(path, f"autosave state is unreadable ({err})",
                             "delete the folder to start over") from None
        return state if isinstance(state, dict) else {}

    def write_state(self, **extra: Any) -> None:
        """Write ``state.json`` (the scan, its grid, the schema, ``extra``) atomically."""
        state = {**self.read_state(), "scan": str(self.scan), "shape": list(self.shape),
                 "affine": np.asarray(self.geometry.affine).tolist(), "schema": self.schema,
                 "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        atomic_write_bytes(self.folder / STATE, (json.dumps(state, indent=1) + "\n").encode())

    def write_key(self, z: int, labels: np.ndarray, organ: int | None = None) -> None:
        """Save a whole-slice key (labels), or organ ``organ``'s own key (a bool mask)."""
        if not self.folder.is_dir():
            self.write_state()
        if organ is not None:
            labels = labels.astype(np.uint8) * np.uint8(organ)
        atomic_write_bytes(self._key_path(z, organ), encode_png(labels))

    def remove_key(self, z: int, organ: int | None = None) -> None:
        self._key_path(z, organ).unlink(missing_ok=True)

    def write_slice_keys(self, z: int, whole: np.ndarray | None,
                         organs: dict[int, np.ndarray]) -> None:
        """Make the saved keys of slice ``z`` exactly these (see
        ``PropagationSession.keys_of_slice``)."""
        if whole is None:
            self.remove_key(z)
        else:
            self.write_key(z, whole)
        for organ, z_saved in self._key_files(organs=True):
            if z_saved == z and organ not in organs:
                self.remove_key(z, organ)
        for organ, mask in organs.items():
            self.write_key(z, mask, organ)

    def discard(self) -> None:
        """Forget every saved key (the folder and its state stay)."""
        for path in [*self._key_files().values(), *self._key_files(organs=True).values()]:
            path.unlink(missing_ok=True)
