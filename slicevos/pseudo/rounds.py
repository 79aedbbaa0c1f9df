"""Pseudo-label rounds: the config, the folder layout, and a runner that resumes at any step.

Round r runs six steps in order::

    cache     slice cache of the round's dataset (base dataset in round 1)   PseudoSteps
    train     M reference members (one per seed)                               injected
    generate  pseudo-labels of the round's unlabeled cases                     injected
    filter    consensus scores and accept/reject decisions                     PseudoSteps
    dataset   next round's dataset folder: labeled + accepted, rest unlabeled  PseudoSteps
    validate  DSC of the round's members on the held-out validation cases      injected

::

    OUT/state.json            finished steps and their results (atomic, after every step)
    OUT/rounds.csv            one row per finished round (atomic)
    OUT/validation_cache/     slice cache of validation.dataset (when given)
    OUT/round_01/cache/  members/seed<s>/last.pt  pseudo/  next_dataset/

A rerun skips the recorded steps; an unfinished step is rerun and is itself resumable (cache
and generation skip finished cases, training resumes from last.pt, the dataset is written to a
temporary folder and renamed). Rounds stop after ``rounds`` or when fewer than ``min_new``
volumes pass. ``rounds`` and ``min_new`` may change between runs, ``filter`` until a filter
step has run; any other config change is refused. This module imports no model code:
train/generate/validate are passed in.

Test hook: ``SLICEVOS_TEST_EXIT_AFTER_STEP=<round>:<step>`` exits the process (``os._exit(75)``)
right after that step is recorded, like a kill. The config: ``slicevos.pseudo.rounds_config``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slicevos.config import config_to_dict
from slicevos.data.cache import SliceCache
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes
from slicevos.pseudo.dataset_writer import write_accepted_dataset
from slicevos.pseudo.filtering import Decision, select_cases, volume_cutoff
from slicevos.pseudo.folder import score_pseudo_folder
from slicevos.pseudo.rounds_config import RoundsConfig

STEPS = ("cache", "train", "generate", "filter", "dataset", "validate")
STATE_FILE, TABLE_FILE = "state.json", "rounds.csv"
TEST_EXIT_AFTER_STEP_ENV = "SLICEVOS_TEST_EXIT_AFTER_STEP"
TABLE_COLUMNS = ("round", "checkpoints", "labeled", "candidates", "accepted", "partial",
                 "mean_consensus", "val_dice", "val_dice_fused")
_RESUMABLE_CHANGES = ("rounds", "min_new")


@dataclass(frozen=True)
class RoundContext:
    """What a step sees: round number, folders, and the results of the earlier steps."""

    round: int
    dir: Path
    dataset: Path
    results: dict[str, dict[str, Any]]

    @property
    def cache(self) -> Path:
        return self.dir / "cache"

    @property
    def pseudo(self) -> Path:
        return self.dir / "pseudo"

    @property
    def next_dataset(self) -> Path:
        return self.dir / "next_dataset"

    def member_dir(self, seed: int) -> Path:
        return self.dir / "members" / f"seed{seed}"


StepFn = Callable[[RoundContext], dict[str, Any]]


class PseudoSteps:
    """The steps that need no model: cache, filter, dataset."""

    def __init__(self, config: RoundsConfig) -> None:
        self.config = config
        self.prepare = PrepareConfig(schema=config.schema, workers=config.prepare_workers)

    @property
    def validation_cache(self) -> Path:
        return Path(self.config.out_dir) / "validation_cache"

    def validation_cases(self, ctx: RoundContext) -> tuple[Path, list[str]]:
        """(cache folder, case ids) of the validation set."""
        if self.config.validation.dataset is None:
            return ctx.cache, list(self.config.validation.cases)
        return self.validation_cache, SliceCache(self.validation_cache).labeled_cases

    def cache(self, ctx: RoundContext) -> dict[str, Any]:
        prepare_cache(ctx.dataset, ctx.cache, self.prepare)
        if self.config.validation.dataset is not None:
            prepare_cache(self.config.validation.dataset, self.validation_cache, self.prepare)
        cache = SliceCache(ctx.cache)
        held_out = set(self.config.validation.cases)
        return {"labeled": len([c for c in cache.labeled_cases if c not in held_out]),
                "unlabeled": len(cache.unlabeled_cases)}

    def _decisions(self, ctx: RoundContext) -> tuple[list[Decision], float]:
        scores = score_pseudo_folder(ctx.pseudo, self.config.filter.variant)
        return select_cases(scores, self.config.filter), volume_cutoff(scores, self.config.filter)

    def filter(self, ctx: RoundContext) -> dict[str, Any]:
        if not ctx.results["generate"]["candidates"]:
            return {"accepted": 0, "partial": 0, "mean_consensus": None, "cutoff": None}
        decisions, cutoff = self._decisions(ctx)
        return {"accepted": sum(d.accepted for d in decisions),
                "partial": sum(d.partial for d in decisions),
                "mean_consensus": float(np.mean([d.score for d in decisions])), "cutoff": cutoff,
                "accepted_cases": [d.case_id for d in decisions if d.accepted]}

    def dataset(self, ctx: RoundContext) -> dict[str, Any]:
        if not ctx.results["generate"]["candidates"]:
            return {"path": None}
        decisions, cutoff = self._decisions(ctx)
        write_accepted_dataset(decisions, ctx.pseudo, ctx.next_dataset, ctx.dataset,
                               overwrite=True, cutoff=cutoff)
        return {"path": str(ctx.next_dataset)}


def _row(ctx: RoundContext, out_dir: Path) -> dict[str, Any]:
    r = ctx.results
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    return {"round": ctx.round,
            "checkpoints": ";".join(Path(os.path.relpath(p, out_dir)).as_posix()
                                    for p in r["train"]["checkpoints"]),
            "labeled": r["cache"]["labeled"], "candidates": r["generate"]["candidates"],
            "accepted": r["filter"]["accepted"], "partial": r["filter"]["partial"],
            "mean_consensus": fmt(r["filter"]["mean_consensus"]),
            "val_dice": fmt(r["validate"]["dice"]), "val_dice_fused": fmt(r["validate"].get("dice_fused"))}


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rounds table as aligned text (checkpoint paths left out)."""
    columns = [c for c in TABLE_COLUMNS if c != "checkpoints"]
    cells = [columns] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells)


class RoundRunner:
    """Runs the rounds of ``config`` with ``steps`` (step name -> callable), resuming from
    ``OUT/state.json``; ``run()`` returns the table rows."""

    def __init__(self, config: RoundsConfig, steps: Mapping[str, StepFn]) -> None:
        missing = [s for s in STEPS if s not in steps]
        if missing:
            raise ValueError(f"steps {missing} are not provided")
        self.config, self.steps = config, steps
        self.out = Path(config.out_dir)
        self.state_path = self.out / STATE_FILE
        self.state = self._load_state()
        self.stop_reason = f"{config.rounds} round(s) done"

    def _load_state(self) -> dict[str, Any]:
        config = json.loads(json.dumps(config_to_dict(self.config)))
        if not self.state_path.is_file():
            return {"config": config, "rounds": {}}
        state = json.loads(self.state_path.read_text())
        free = set(_RESUMABLE_CHANGES)
        if not any("filter" in steps for steps in state["rounds"].values()):
            free.add("filter")  # scores can be inspected before the threshold is chosen
        comparable = lambda c: {k: v for k, v in c.items() if k not in free}  # noqa: E731
        if comparable(state["config"]) != comparable(config):
            changed = sorted(k for k in config if state["config"].get(k) != config[k])
            raise InputError(self.state_path, f"the run was started with another config "
                             f"(changed: {changed})", "restore the config or use another out_dir")
        state["config"] = config
        return state

    def _save(self) -> None:
        atomic_write_bytes(self.state_path, json.dumps(self.state, indent=1).encode())

    def _context(self, r: int) -> RoundContext:
        dataset = (Path(self.config.base_dataset) if r == 1
                   else self.out / f"round_{r - 1:02d}" / "next_dataset")
        results = self.state["rounds"].setdefault(str(r), {})
        return RoundContext(r, self.out / f"round_{r:02d}", dataset, results)

    def _write_table(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, TABLE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.out / TABLE_FILE, buf.getvalue().encode())

    def run(self) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        exit_after = os.environ.get(TEST_EXIT_AFTER_STEP_ENV)
        for r in range(1, self.config.rounds + 1):
            ctx = self._context(r)
            for step in STEPS:
                if step not in ctx.results:
                    ctx.results[step] = self.steps[step](ctx)
                    self._save()
                    if exit_after == f"{r}:{step}":
                        os._exit(75)
            rows.append(_row(ctx, self.out))
            self._write_table(rows)
            accepted = ctx.results["filter"]["accepted"]
            if accepted < self.config.min_new:
                self.stop_reason = f"round {r}: {accepted} accepted < min_new {self.config.min_new}"
                break
            if ctx.results["generate"]["candidates"] == accepted:
                self.stop_reason = f"round {r}: no unlabeled case left"
                break
        return rows
