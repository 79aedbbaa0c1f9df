"""Scores of the simulated annotator's runs (``slicevos.benchmarks.effort``) and their files.

A run's curves hold, per organ, one value per step (step 0: after the start; step s: after
the s-th correction round) of: the organ's key count, its 3D DSC and NSD over the whole
volume. From them:

- ``dsc_at_keys(curve, k)``: the DSC of the last step at which the organ had at most ``k``
  keys (None: the start already has more);
- ``nos(curve, t)``: number of slices, the key count at the first step whose DSC reaches ``t``
  (None: never within the run);
- ``dsc_auc(curve)``: the trapezoidal mean of DSC over key counts 1..6, in [0, 1] (a key count
  before the start's counts as DSC 0);
- ``worse_keys(curve)``: (the steps that gave the organ a key and lowered its DSC by more than
  ``WORSE_TOLERANCE``, the steps that gave it a key): how often a correct key made it worse.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from slicevos.io.atomic import atomic_path
from slicevos.metrics.overlap import dice
from slicevos.metrics.surface import normalized_surface_dice

TABLE_KEYS = (1, 2, 3, 4, 6, 8)
AUC_KEYS = 6
NOS_THRESHOLDS = (0.90, 0.95)
WORSE_TOLERANCE = 0.005  # the bound: no correct key lowers an organ's DSC by more


@dataclass
class Curve:
    """One organ's values per step (index = step)."""

    keys: list[int] = field(default_factory=list)
    dsc: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)


@dataclass
class Correction:
    """One simulated edit: slice ``z`` of ``organ`` (None: the whole slice) at ``step`` (0: the
    start), ``pixels`` changed, ``seconds`` of propagation after it (None: shared by the start's
    single propagation), ``rule`` that picked it, whether the rule ``fell_back`` to bisect,
    (organ mode) the organ's DSC right after its own propagation, and ``ahead_seconds``: the
    page's work ahead after that propagation (``Labeler.wait_work_ahead``; None: not waited
    for), which the user's time to look and draw covers."""

    step: int
    organ: int | None
    z: int
    pixels: int
    seconds: float | None
    rule: str
    fell_back: bool = False
    dsc_after: float | None = None
    ahead_seconds: float | None = None


@dataclass
class Run:
    """One simulated session: a scan, a mode (organ or slice), a rule and a start."""

    scan: str
    mode: str
    rule: str
    start: str
    organs: dict[int, str]
    curves: dict[int, Curve] = field(default_factory=dict)
    corrections: list[Correction] = field(default_factory=list)
    start_seconds: float = 0.0
    start_ahead_seconds: float | None = None


def score(truth: np.ndarray, labels: np.ndarray, organ: int, spacing: tuple[float, ...],
          tolerance_mm: float) -> tuple[float, float]:
    """(DSC, NSD at ``tolerance_mm``) of one organ over the whole (D, H, W) volume; ``spacing``
    (dz, dy, dx) in mm."""
    gt, pred = truth == organ, labels == organ
    return dice(gt, pred), normalized_surface_dice(gt, pred, spacing, tolerance_mm)


def dsc_at_keys(curve: Curve, k: int) -> float | None:
    values = [d for n, d in zip(curve.keys, curve.dsc, strict=True) if n <= k]
    return values[-1] if values else None


def nos(curve: Curve, threshold: float) -> int | None:
    return next((n for n, d in zip(curve.keys, curve.dsc, strict=True) if d >= threshold), None)


def dsc_auc(curve: Curve, last: int = AUC_KEYS) -> float:
    values = [dsc_at_keys(curve, k) or 0.0 for k in range(1, last + 1)]
    return float(sum((a + b) / 2 for a, b in pairwise(values)) / (last - 1))


def worse_keys(curve: Curve, tolerance: float = WORSE_TOLERANCE) -> tuple[int, int]:
    steps = [(d1 < d0 - tolerance) for (k0, d0), (k1, d1) in pairwise(
        zip(curve.keys, curve.dsc, strict=True)) if k1 > k0]
    return sum(steps), len(steps)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize(run: Run) -> dict[str, Any]:
    """The run's table row: mean over organs of DSC after ``TABLE_KEYS`` keys, NoS (mean over
    the organs that reached it, and how many did), DSC_AUC, ``worse`` (:func:`worse_keys`
    summed over organs), pixels edited (start included) and propagation seconds per
    correction (start excluded); ``nos_by_organ`` per organ name."""
    curves = run.curves.values()
    row: dict[str, Any] = {f"dsc@{k}": _mean([dsc_at_keys(c, k) for c in curves])
                           for k in TABLE_KEYS}
    for t in NOS_THRESHOLDS:
        reached = [n for n in (nos(c, t) for c in curves) if n is not None]
        row[f"nos@{t:.2f}"] = _mean(reached)
        row[f"reached@{t:.2f}"] = (len(reached), len(run.curves))
    row["auc"] = _mean([dsc_auc(c) for c in curves])
    counts = [worse_keys(c) for c in curves]
    row["worse"] = (sum(w for w, _ in counts), sum(n for _, n in counts))
    row["pixels"] = sum(c.pixels for c in run.corrections)
    seconds = [c.seconds for c in run.corrections if c.step > 0 and c.seconds is not None]
    row["s_mean"] = _mean(seconds)
    row["s_max"] = max(seconds) if seconds else None
    ahead = [c.ahead_seconds for c in run.corrections if c.ahead_seconds is not None]
    if run.start_ahead_seconds is not None:
        ahead.append(run.start_ahead_seconds)
    row["ahead_max"] = max(ahead) if ahead else None
    row["nos_by_organ"] = {run.organs[o]: nos(c, 0.95) for o, c in run.curves.items()}
    return row


def write_json(runs: list[Run], path: Path, settings: dict[str, Any]) -> Path:
    """Every run (curves per organ name, corrections, summary) and the settings."""
    data = {"settings": settings, "runs": [
        {**asdict(r), "curves": {r.organs[o]: asdict(c) for o, c in r.curves.items()},
         "organs": {name: o for o, name in r.organs.items()}, "summary": summarize(r)}
        for r in runs]}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))
    return path


CSV_FIELDS = ("scan", "mode", "rule", "start", "organ", "step", "keys", "dsc", "nsd", "z",
              "pixels", "seconds", "picked_by", "fell_back", "dsc_after", "ahead_seconds")


def write_csv(runs: list[Run], path: Path) -> Path:
    """One row per scan, mode, rule, organ and step; the correction columns are the organ's own
    correction at that step (slice mode: the step's whole-slice correction, on every organ)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for run in runs:
            done = {(c.step, c.organ): c for c in run.corrections}
            for organ, curve in run.curves.items():
                for step, (keys, d, s) in enumerate(zip(curve.keys, curve.dsc, curve.nsd,
                                                            strict=True)):
                    c = done.get((step, organ if run.mode == "organ" else None))
                    edit = ([c.z, c.pixels, c.seconds, c.rule, c.fell_back, c.dsc_after,
                             "" if c.ahead_seconds is None else c.ahead_seconds]
                            if c else [""] * 7)
                    writer.writerow([run.scan, run.mode, run.rule, run.start, run.organs[organ],
                                     step, keys, f"{d:.5f}", f"{s:.5f}", *edit])
    return path


def write_plot(runs: list[Run], path: Path, max_keys: int) -> Path | None:
    """DSC (mean over organs) against key count, one line per rule; None (and a printed line)
    when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"plot {path.name} skipped: matplotlib is not installed "
              '(pip install -e ".[plot]")')
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    ks = list(range(1, max_keys + 2))
    for run in runs:
        mean = [_mean([dsc_at_keys(c, k) for c in run.curves.values()]) for k in ks]
        axes.plot(ks, [np.nan if m is None else m for m in mean], marker="o", label=run.rule)
    first = runs[0]
    axes.set(xlabel="key slices", ylabel="DSC (mean over organs)", ylim=(0, 1),
             title=f"{first.scan}: {first.mode} mode, start {first.start}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path
