"""Write a folder of phantoms in the FLARE layout (see ``slicevos.data.dataset_folder``).

::

    OUT/
      imagesTr/phantom_0000_0000.nii.gz      int16 HU
      labelsTr/phantom_0000.nii.gz           uint8 labels, same grid
      unlabeled/phantom_u0000_0000.nii.gz    int16 HU
      dataset.json                           cases, label schema, generator settings

Every file is written atomically; cases already on disk are skipped, so an interrupted run
continues where it stopped. Case seeds come from ``(seed, split, index)``, so asking for more
cases later adds new ones without changing the existing ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from slicevos.config import config_to_dict
from slicevos.errors import InputError
from slicevos.io.atomic import atomic_path, atomic_write_bytes
from slicevos.io.nifti import save_labels
from slicevos.io.volume import Geometry
from slicevos.phantom.generator import PhantomConfig, make_phantom

IMAGES_DIR, LABELS_DIR, UNLABELED_DIR = "imagesTr", "labelsTr", "unlabeled"
DATASET_JSON = "dataset.json"
_SPLITS = {"labeled": 0, "unlabeled": 1}


@dataclass(frozen=True)
class PhantomCase:
    case_id: str
    seed: int
    image: Path
    label: Path | None  # None for unlabeled cases

    def done(self) -> bool:
        return self.image.is_file() and (self.label is None or self.label.is_file())


@dataclass(frozen=True)
class DatasetSummary:
    root: Path
    written: int
    skipped: int


def case_seed(seed: int, split: str, index: int) -> int:
    """Seed of case ``index`` of ``split`` ("labeled" or "unlabeled") in a dataset of ``seed``."""
    state = np.random.SeedSequence([int(seed), _SPLITS[split], int(index)]).generate_state(1)
    return int(state[0])


def plan_cases(root: Path, n_labeled: int, n_unlabeled: int, seed: int) -> list[PhantomCase]:
    cases = []
    for i in range(n_labeled):
        cid = f"phantom_{i:04d}"
        cases.append(PhantomCase(cid, case_seed(seed, "labeled", i),
                                 root / IMAGES_DIR / f"{cid}_0000.nii.gz",
                                 root / LABELS_DIR / f"{cid}.nii.gz"))
    for j in range(n_unlabeled):
        cid = f"phantom_u{j:04d}"
        cases.append(PhantomCase(cid, case_seed(seed, "unlabeled", j),
                                 root / UNLABELED_DIR / f"{cid}_0000.nii.gz", None))
    return cases


def save_ct(hu: np.ndarray, geometry: Geometry, path: str | PathLike) -> Path:
    """Write a canonical ``(D, H, W)`` HU array as int16 NIfTI in ``geometry`` (atomic)."""
    path = Path(path)
    data = np.clip(np.round(hu), -32768, 32767).astype(np.int16)
    img = nib.Nifti1Image(np.ascontiguousarray(geometry.from_canonical(data)), geometry.affine)
    img.set_qform(geometry.affine, code=1)
    img.set_sform(geometry.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def _generator_info(seed: int, config: PhantomConfig) -> dict[str, Any]:
    return {"seed": int(seed), "config": config_to_dict(config)}


def _check_existing(root: Path, generator: dict[str, Any]) -> None:
    path = root / DATASET_JSON
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("generator")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        old = None
    if old != generator:
        old = old or {}
        diff = sorted(k for k in {**generator["config"], **old.get("config", {})}
                      if generator["config"].get(k) != old.get("config", {}).get(k))
        what = f"seed {old.get('seed')} vs {generator['seed']}" if old.get("seed") != generator[
            "seed"] else ""
        what = ", ".join(filter(None, [what, f"config keys {diff}" if diff else ""]))
        raise InputError(path, f"the folder holds phantoms made with other settings ({what or 'unreadable'})",
                         "pass --overwrite (overwrite=True) to regenerate them, or choose another folder")


def _write_json(root: Path, cases: list[PhantomCase], config: PhantomConfig,
                generator: dict[str, Any], complete: bool) -> None:
    schema = config.schema
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    labeled = [c for c in cases if c.label is not None]
    payload = {
        "name": "slicevos-phantom",
        "description": "Synthetic abdominal CT phantoms (slicevos.phantom.generator); HU as int16",
        "schema": schema.name,
        "labels": schema.label_map(),
        "channel_names": {"0": "CT"},
        "file_ending": ".nii.gz",
        "numTraining": len(labeled),
        "numUnlabeled": len(cases) - len(labeled),
        "training": [{"case": c.case_id, "image": rel(c.image), "label": rel(c.label),
                      "seed": c.seed} for c in labeled],
        "unlabeled": [{"case": c.case_id, "image": rel(c.image), "seed": c.seed}
                      for c in cases if c.label is None],
        "generator": generator,
        "complete": complete,
    }
    atomic_write_bytes(root / DATASET_JSON, (json.dumps(payload, indent=2) + "\n").encode())


def write_phantom_dataset(
    out_dir: str | PathLike,
    n_labeled: int,
    n_unlabeled: int = 0,
    config: PhantomConfig | None = None,
    seed: int = 0,
    with_tumor: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> DatasetSummary:
    """Write ``n_labeled`` labeled and ``n_unlabeled`` unlabeled phantoms under ``out_dir``.

    ``with_tumor`` overrides ``config.with_tumors`` (True: tumors, label 14, schema flare23).
    Existing cases are skipped unless ``overwrite``; a folder made with another seed or config
    is an error unless ``overwrite``.
    """
    if n_labeled < 0 or n_unlabeled < 0 or n_labeled + n_unlabeled == 0:
        raise InputError(out_dir, f"asked for {n_labeled} labeled and {n_unlabeled} unlabeled "
                         "phantoms", "ask for at least one case (e.g. --labeled 4)")
    config = config or PhantomConfig()
    if with_tumor is not None:
        config = replace(config, with_tumors=bool(with_tumor))
    root = Path(out_dir)
    generator = _generator_info(seed, config)
    if not overwrite:
        _check_existing(root, generator)
    cases = plan_cases(root, n_labeled, n_unlabeled, seed)
    _write_json(root, cases, config, generator, complete=False)
    todo = [c for c in cases if overwrite or not c.done()]
    for case in tqdm(todo, desc="phantoms", unit="case", disable=not progress):
        phantom = make_phantom(case.seed, config)
        if case.label is not None:  # label first: an image alone would look like an unlabeled case
            save_labels(phantom.labels, phantom.geometry, case.label)
        save_ct(phantom.hu, phantom.geometry, case.image)
    _write_json(root, cases, config, generator, complete=True)
    return DatasetSummary(root, written=len(todo), skipped=len(cases) - len(todo))
