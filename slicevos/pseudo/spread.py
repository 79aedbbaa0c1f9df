"""A pool of phantoms whose pseudo-label quality really varies: the benchmark of the consensus
score and the unlabeled pool of the rounds experiment.

A pool is described by ``configs/rounds/spread_pool*.yaml`` (:class:`SpreadConfig`): a ``base``
:class:`~slicevos.phantom.generator.PhantomConfig` (fields as in ``configs/phantom``) and named
``conditions``, each a few overrides of it, with ``seeds_per_condition`` cases each. Besides the
PhantomConfig fields a condition may set ``contrast`` (organ HU pulled towards 45 HU by that
factor: 1 = default, 0.3 = flat) and ``tumors`` (a tumor load; the truth then counts tumor
voxels as the host organ, since a FLARE22 model has no tumor class). ::

    POOL/imagesTr/, labelsTr/      labeled cases at the base config (``labeled``)
    POOL/unlabeled/<case>_0000.nii.gz  one per (condition, seed); case id
                                   ``<prefix><condition>_<k>``
    POOL/truth/<case>.nii.gz       ground truth of the unlabeled cases (scoring only: the
                                   dataset readers never look at this folder)
    POOL/spread.json               case -> condition, seed, PhantomConfig (written last)

With ``split: labeled`` the condition cases go to ``imagesTr/`` + ``labelsTr/`` instead (the
label is the truth): a labeled validation set spread like the archive it stands for, so that
a model is judged on the conditions its unlabeled pool holds, not only on clean scans.

The ``configs/rounds/pool_*.yaml`` pools are graded by one generator each (noise, contrast and
blur, field of view and z-truncation, tumor load): ``slicevos-benchmark-pseudo --per-pool``
judges the consensus default on each alone, by its worst pool.

Rerunning with the same config keeps the cases already written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

from slicevos.config import config_to_dict, from_dict
from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes
from slicevos.io.nifti import save_labels
from slicevos.phantom import DEFAULT_ORGAN_HU, PhantomConfig, make_phantom
from slicevos.phantom.dataset import (
    IMAGES_DIR,
    LABELS_DIR,
    UNLABELED_DIR,
    case_seed,
    save_ct,
)

TRUTH_DIR, MANIFEST = "truth", "spread.json"
SPLITS = ("unlabeled", "labeled")
EXTRA_KEYS = ("contrast", "tumors")
_TUMOR_LOAD = {"with_tumors": True, "tumor_probability": 1.0}
_SOFT_TISSUE_HU = 45.0


@dataclass(frozen=True)
class SpreadConfig:
    """``base``: PhantomConfig fields; ``conditions``: name -> overrides; ``split``: where the
    condition cases go, ``unlabeled`` (image in unlabeled/, truth in truth/) or ``labeled``
    (imagesTr/ + labelsTr/); ``labeled``: extra labeled cases at the base config; ``prefix``
    starts every condition case id (pools scored together need distinct ids) (module doc)."""

    base: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, dict[str, Any]] = field(default_factory=lambda: {"clean": {}})
    seeds_per_condition: int = 2
    labeled: int = 0
    seed: int = 0
    split: str = "unlabeled"
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise InputError(None, f"split {self.split!r} is unknown", f"use one of {list(SPLITS)}")


def load_spread_config(path: str | PathLike) -> SpreadConfig:
    """Read a spread-pool YAML; unknown top-level keys and bad conditions raise InputError."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(path, f"cannot read the pool config ({err})", "check the path") from None
    config = from_dict(SpreadConfig, raw, str(path))
    for name in config.conditions:
        condition_config(config, name, where=str(path))  # fail early on a bad override
    return config


def condition_config(config: SpreadConfig, name: str, where: str = "spread config"
                     ) -> PhantomConfig:
    """The PhantomConfig that draws the cases of condition ``name``."""
    overrides = dict(config.conditions[name] or {})
    known = {f.name for f in fields(PhantomConfig)} | set(EXTRA_KEYS)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(where, f"condition {name!r} has unknown keys {unknown}",
                         f"use PhantomConfig fields or {list(EXTRA_KEYS)}")
    contrast = overrides.pop("contrast", None)
    tumors = overrides.pop("tumors", None)
    data = {**config.base, **overrides}
    if contrast is not None:
        organ_hu = {**DEFAULT_ORGAN_HU, **data.get("organ_hu", {})}
        data["organ_hu"] = {k: _SOFT_TISSUE_HU + float(contrast) * (v - _SOFT_TISSUE_HU)
                            for k, v in organ_hu.items()}
    if tumors is not None:
        data.update(_TUMOR_LOAD, **dict(tumors))
    return from_dict(PhantomConfig, data, f"{where}: condition {name}")


@dataclass(frozen=True)
class PoolCase:
    case_id: str
    condition: str
    seed: int
    config: PhantomConfig


def plan_pool(config: SpreadConfig) -> list[PoolCase]:
    """The unlabeled cases: ``seeds_per_condition`` per condition, seeds from ``config.seed``."""
    cases, index = [], 0
    for name in config.conditions:
        phantom = condition_config(config, name)
        for k in range(config.seeds_per_condition):
            cases.append(PoolCase(f"{config.prefix}{name}_{k}", name,
                                  case_seed(config.seed, "unlabeled", index),
                                  phantom))
            index += 1
    return cases


def _truth(case: PoolCase):  # noqa: ANN202 - (labels, geometry)
    """Labels without tumors (same anatomy: tumors have their own generator) and geometry."""
    clean = make_phantom(case.seed, replace(case.config, with_tumors=False))
    return clean.labels, clean.geometry


def _read_manifest(path: Path) -> dict[str, Any]:
    """A written manifest, its config completed with the defaults of fields added since."""
    manifest = json.loads(path.read_text())
    manifest["config"] = config_to_dict(from_dict(SpreadConfig, manifest["config"], str(path)))
    return manifest


def write_pool(config: SpreadConfig, out_dir: str | PathLike, progress: bool = True) -> Path:
    """Write the pool (module doc); cases already on disk are kept. Returns the folder."""
    from tqdm import tqdm

    root = Path(out_dir)
    cases = plan_pool(config)
    manifest = {"config": config_to_dict(config),
                "cases": {c.case_id: {"condition": c.condition, "seed": c.seed,
                                      "phantom": config_to_dict(c.config)} for c in cases}}
    old = root / MANIFEST
    if old.is_file() and _read_manifest(old) != manifest:
        raise InputError(old, "the pool was written with another config",
                         "delete the folder or choose another one")
    base = from_dict(PhantomConfig, dict(config.base), "spread base")
    for folder in (IMAGES_DIR, LABELS_DIR, UNLABELED_DIR, TRUTH_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(config.labeled):
        cid = f"phantom_{i:04d}"
        image, label = root / IMAGES_DIR / f"{cid}_0000.nii.gz", root / LABELS_DIR / f"{cid}.nii.gz"
        if not (image.is_file() and label.is_file()):
            phantom = make_phantom(case_seed(config.seed, "labeled", i), base)
            save_labels(phantom.labels, phantom.geometry, label)
            save_ct(phantom.hu, phantom.geometry, image)
    image_dir, truth_dir = ((UNLABELED_DIR, TRUTH_DIR) if config.split == "unlabeled"
                            else (IMAGES_DIR, LABELS_DIR))
    for case in tqdm(cases, desc="spread pool", unit="case", disable=not progress):
        image = root / image_dir / f"{case.case_id}_0000.nii.gz"
        truth = root / truth_dir / f"{case.case_id}.nii.gz"
        if image.is_file() and truth.is_file():
            continue
        phantom = make_phantom(case.seed, case.config)
        labels, geometry = _truth(case)
        save_labels(labels, geometry, truth)
        save_ct(phantom.hu, phantom.geometry, image)
    atomic_write_bytes(old, (json.dumps(manifest, indent=1) + "\n").encode())
    return root


def pool_conditions(pool: str | PathLike) -> dict[str, str]:
    """Case id -> condition name of a written pool."""
    path = Path(pool) / MANIFEST
    if not path.is_file():
        raise InputError(path, "no spread.json", "write the pool first (--pool-config)")
    return {c: v["condition"] for c, v in json.loads(path.read_text())["cases"].items()}
