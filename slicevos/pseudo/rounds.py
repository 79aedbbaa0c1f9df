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
    OUT/result.json           the round whose model to use (round guard, below)
    OUT/validation_cache/     slice cache of validation.dataset (when given)
    OUT/round_01/cache/  members/seed<s>/last.pt  pseudo/  next_dataset/

A rerun skips the recorded steps; an unfinished step is rerun and is itself resumable (cache
and generation skip finished cases, training resumes from last.pt, the dataset is written to a
temporary folder and renamed). Rounds stop after ``rounds`` or when fewer than ``min_new``
volumes pass. ``rounds``, ``min_new`` and ``on_regression`` may change between runs, ``filter``
until a filter step has run; any other config change is refused.

With ``baseline``, round 0 trains the members on the labeled cases only (supervised, same
iterations) and validates them: the model the rounds must beat (steps cache, train, validate).

Round guard: from round 2 on (round 1 too with a baseline), a round's validation DSC
(``val_dice``, mean over members) is compared with the last kept round's; a lower value is a
regression, flagged in ``rounds.csv`` (``val_change``, ``regression``, ``action``).
``on_regression``: ``rollback`` (default) undoes the round: its model and its additions are
not used, the run stops and its result stays the last kept round (retraining on that round's
data would only repeat it); ``stop`` ends the run with the regressing round as its result;
``keep`` goes on. ``OUT/result.json`` names the result: round, checkpoints, validation DSC and
the dataset its members were trained on (after a rollback, the additions that fed the
regressing round are thus left out). This module imports no model code:
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

from slicevos.config import config_to_dict, with_defaults
from slicevos.data.cache import SliceCache
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes
from slicevos.pseudo.dataset_writer import write_accepted_dataset
from slicevos.pseudo.filtering import Decision, select_cases, volume_cutoff
from slicevos.pseudo.folder import score_pseudo_folder
from slicevos.pseudo.rounds_config import RoundsConfig

STEPS = ("cache", "train", "generate", "filter", "dataset", "validate")
BASELINE_STEPS = ("cache", "train", "validate")  # round 0: labeled cases only
TEST_EXIT_AFTER_STEP_ENV = "SLICEVOS_TEST_EXIT_AFTER_STEP"
STATE_FILE, TABLE_FILE, RESULT_FILE = "state.json", "rounds.csv", "result.json"
TABLE_COLUMNS = ("round", "checkpoints", "labeled", "candidates", "accepted", "partial",
                 "mean_consensus", "val_dice", "val_dice_fused", "val_change", "regression",
                 "action")
_RESUMABLE_CHANGES = ("rounds", "min_new", "on_regression")


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


def _fmt(value: float | None, signed: bool = False) -> str:
    return "" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"


def _row(ctx: RoundContext, out_dir: Path, guard: dict[str, Any]) -> dict[str, Any]:
    r, fmt = ctx.results, _fmt
    return {"round": ctx.round,
            "checkpoints": ";".join(Path(os.path.relpath(p, out_dir)).as_posix()
                                    for p in r["train"]["checkpoints"]),
            "labeled": r["cache"]["labeled"],
            "candidates": r.get("generate", {}).get("candidates", ""),
            "accepted": r.get("filter", {}).get("accepted", ""),
            "partial": r.get("filter", {}).get("partial", ""),
            "mean_consensus": fmt(r.get("filter", {}).get("mean_consensus")),
            "val_dice": fmt(r["validate"]["dice"]),
            "val_dice_fused": fmt(r["validate"].get("dice_fused")), **guard}


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
        state["config"] = json.loads(json.dumps(with_defaults(RoundsConfig, state["config"], "state")))
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
        dataset = (Path(self.config.base_dataset) if r <= 1
                   else self.out / f"round_{r - 1:02d}" / "next_dataset")
        results = self.state["rounds"].setdefault(str(r), {})
        return RoundContext(r, self.out / f"round_{r:02d}", dataset, results)

    def _write_table(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, TABLE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.out / TABLE_FILE, buf.getvalue().encode())

    def _write_result(self, ctx: RoundContext | None) -> None:
        """``result.json``: the round whose model the run recommends (None: no round kept)."""
        result: dict[str, Any] = {"round": None, "checkpoints": [], "trained_on": None}
        if ctx is not None:
            result = {"round": ctx.round, "checkpoints": ctx.results["train"]["checkpoints"],
                      "val_dice": ctx.results["validate"]["dice"], "trained_on": str(ctx.dataset)}
        atomic_write_bytes(self.out / RESULT_FILE, json.dumps(result, indent=1).encode())

    def _guard(self, ctx: RoundContext, kept: RoundContext | None) -> dict[str, Any]:
        """Round-guard columns of ``ctx`` against the last kept round ``kept``."""
        if kept is None:
            return {"val_change": "", "regression": "", "action": ""}
        change = ctx.results["validate"]["dice"] - kept.results["validate"]["dice"]
        regression = change < 0
        return {"val_change": _fmt(change, signed=True), "regression": "yes" if regression else "no",
                "action": self.config.on_regression if regression else ""}

    def run(self) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        exit_after = os.environ.get(TEST_EXIT_AFTER_STEP_ENV)
        kept: RoundContext | None = None  # the round whose model the run stands on
        for r in range(0 if self.config.baseline else 1, self.config.rounds + 1):
            ctx = self._context(r)
            for step in BASELINE_STEPS if r == 0 else STEPS:
                if step not in ctx.results:
                    ctx.results[step] = self.steps[step](ctx)
                    self._save()
                    if exit_after == f"{r}:{step}":
                        os._exit(75)
            guard = self._guard(ctx, kept)
            rows.append(_row(ctx, self.out, guard))
            self._write_table(rows)
            if guard["action"] == "rollback":
                self.stop_reason = (f"round {r}: validation DSC {guard['val_change']} against "
                                    f"round {kept.round}; rolled back to round {kept.round}")
                break
            kept = ctx
            if r == 0:
                continue
            if guard["action"] == "stop":
                self.stop_reason = f"round {r}: validation DSC {guard['val_change']}; stopped"
                break
            accepted = ctx.results["filter"]["accepted"]
            if accepted < self.config.min_new:
                self.stop_reason = f"round {r}: {accepted} accepted < min_new {self.config.min_new}"
                break
            if ctx.results["generate"]["candidates"] == accepted:
                self.stop_reason = f"round {r}: no unlabeled case left"
                break
        self._write_result(kept)
        return rows
