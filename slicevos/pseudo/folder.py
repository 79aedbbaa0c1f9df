"""Read a pseudo-label folder (written by generation) and score its cases.

::

    PSEUDO/
      <case_id>/members.npz          "labels" uint8 (M, D, H, W) canonical, "member_names" str (M,)
      <case_id>/pseudo_label.nii.gz  fused labels in the source image's own geometry
      <case_id>/case.json            written LAST (completion marker): {"case_id", "image" (absolute
                                     path of the source image), "schema", "members",
                                     "consensus": ConsensusScore.to_dict() (variant dice_mean)}

A case folder without ``case.json`` is incomplete (a generation still running or killed): it
is skipped with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from slicevos.errors import InputError, warn_input
from slicevos.io.labels import LabelSchema, get_schema
from slicevos.pseudo.consensus import DEFAULT_VARIANT, ConsensusScore, consensus_score

MEMBERS_FILE = "members.npz"
PSEUDO_LABEL_FILE = "pseudo_label.nii.gz"
CASE_FILE = "case.json"


@dataclass(frozen=True)
class CaseRecord:
    """One complete case of a pseudo folder, from its ``case.json``."""

    case_id: str
    case_dir: Path
    image: Path
    schema: LabelSchema
    consensus: ConsensusScore | None

    @property
    def members_path(self) -> Path:
        return self.case_dir / MEMBERS_FILE

    @property
    def label_path(self) -> Path:
        return self.case_dir / PSEUDO_LABEL_FILE


@dataclass(frozen=True)
class CaseScore:
    """A complete case and its consensus in the requested variant."""

    record: CaseRecord
    consensus: ConsensusScore

    @property
    def case_id(self) -> str:
        return self.record.case_id

    @property
    def score(self) -> float:
        return self.consensus.volume


def read_case_record(case_dir: str | PathLike) -> CaseRecord:
    """Parse and check ``<case_dir>/case.json``; raises InputError naming the file."""
    case_dir = Path(case_dir)
    path = case_dir / CASE_FILE
    try:
        raw: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the case record ({type(err).__name__}: {err})",
                         "rerun generation for this case (delete its folder first)") from None
    required = ("case_id", "image", "schema")
    missing = [k for k in required if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise InputError(path, f"case record lacks {missing}",
                         "rerun generation for this case (delete its folder first)")
    if str(raw["case_id"]) != case_dir.name:
        raise InputError(path, f"case_id {raw['case_id']!r} differs from the folder name "
                         f"{case_dir.name!r}", "keep one folder per case, named by its case id")
    try:
        schema = get_schema(str(raw["schema"]))
    except InputError as err:
        raise InputError(path, err.problem, err.fix) from None
    consensus = None
    if raw.get("consensus") is not None:
        try:
            consensus = ConsensusScore.from_dict(raw["consensus"])
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise InputError(path, f"invalid consensus entry ({type(err).__name__}: {err})",
                             "rerun generation for this case (delete its folder first)") from None
    return CaseRecord(str(raw["case_id"]), case_dir, Path(str(raw["image"])), schema, consensus)


def load_members(record: CaseRecord) -> np.ndarray:
    """The members' label volumes, uint8 ``(M, D, H, W)``."""
    path = record.members_path
    if not path.is_file():
        raise InputError(path, "members file missing although case.json marks the case complete",
                         "rerun generation for this case (delete its folder first)")
    try:
        with np.load(path, allow_pickle=False) as data:
            labels = data["labels"]
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"cannot read member labels ({type(err).__name__}: {err})",
                         "rerun generation for this case (delete its folder first)") from None
    if labels.ndim != 4 or labels.shape[0] < 2 or labels.dtype != np.uint8:
        raise InputError(path, f"'labels' is {labels.dtype} {labels.shape}, expected uint8 "
                         "(M >= 2, D, H, W)", "rerun generation for this case")
    return labels


def complete_case_dirs(pseudo_dir: str | PathLike) -> list[Path]:
    """Case folders holding ``case.json``, sorted; incomplete ones are skipped with a warning."""
    root = Path(pseudo_dir)
    if not root.is_dir():
        raise InputError(root, "pseudo-label folder not found", "check the path (the output of "
                         "pseudo-label generation)")
    dirs = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (path / CASE_FILE).is_file():
            dirs.append(path)
        else:
            warn_input(path, f"no {CASE_FILE} (generation incomplete); the case is skipped",
                       "rerun the generation to finish it")
    if not dirs:
        raise InputError(root, f"no complete case (no <case>/{CASE_FILE})",
                         "run pseudo-label generation first, or check the path")
    return dirs


def score_pseudo_folder(
    pseudo_dir: str | PathLike, variant: str = DEFAULT_VARIANT, slices: str = "union"
) -> list[CaseScore]:
    """Consensus of every complete case, sorted by case id. The stored score is used when its
    variant and slice rule match; otherwise it is recomputed from ``members.npz``."""
    records = [read_case_record(d) for d in complete_case_dirs(pseudo_dir)]
    schemas = sorted({r.schema.name for r in records})
    if len(schemas) > 1:
        raise InputError(pseudo_dir, f"cases use several label schemas {schemas}",
                         "filter the cases of one schema at a time")
    out = []
    for record in tqdm(records, desc="consensus", unit="case", disable=len(records) < 2):
        stored = record.consensus
        if stored is not None and stored.variant == variant and stored.slices == slices:
            out.append(CaseScore(record, stored))
            continue
        members = load_members(record)
        out.append(CaseScore(record, consensus_score(members, record.schema.ids, variant, slices)))
    return out
