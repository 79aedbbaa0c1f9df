"""Annotation effort: a simulated annotator labels a scan on the labelling page's state
(``slicevos.labeler.state.Labeler``, flow engine) from its true labels, and the benchmark
counts the key slices, edited pixels and propagation seconds it takes to reach a given DSC.

The simulated user works in one of two modes:

- ``organ``: one session per scan and rule. Every organ present in the truth is drawn with its
  true mask on its own middle slice (the lower median of the slices it is on; ``paint_organ``),
  then one propagation. Each step, for each organ in id order: the rule picks one of the
  organ's non-key slices, the user redraws the organ there as the truth (``paint_organ``) and
  the page propagates (``start_propagation`` + ``wait``, timed: seconds per correction); the
  organ's DSC right after is recorded. Then, unless ``work_ahead`` is off, the user takes as
  long to look and draw as the page's work ahead takes (``wait_work_ahead``, timed apart). After all organs' corrections of the step, every
  organ's DSC and NSD are recorded. An organ whose DSC has reached ``stop_dsc`` gets no
  further corrections (its values are still measured at each step).
- ``slice``: one session per scan and rule. The user draws the true labels of the whole slice
  in the middle of the union z-extent of the organs (``paint_slice``); each step the rule
  picks one non-key slice for the whole label map and the user draws its true labels there.
  Corrections stop once every organ's DSC has reached ``stop_dsc``.

With ``start="range"`` the first two corrections (steps 1 and 2, picked by ``range``) are the
page's extent control: the organ (slice mode: every organ) marked "not here" on the slice just
past its first and its last true slice (the end slice itself at the volume's edge), the
z-range the CVPR 2025 challenge's box carries; both starts get ``max_keys`` correction steps, so the curves always
have one value per key. The rules are in ``slicevos.benchmarks.effort_rules``.

What is scored (``slicevos.benchmarks.effort_metrics``): per organ, 3D DSC and NSD (the
organ's FLARE tolerance, voxel spacing in mm) over the whole volume, key slices included (they
are exact, so a key adds its slice's error back to the score: the curve is what the user has
after that many slices). A key is counted per organ in organ mode (own record of the slices
corrected for that organ, so it does not matter whether the page keys the slice for that
organ only or for all) and per slice in slice mode. Pixels edited: pixels on the corrected
slice whose label for the organ (slice mode: any label) differed before the correction; the
start's drawing counts too. Truth restricted to ``organs`` treats the others as background.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slicevos.benchmarks.effort_metrics import Correction, Curve, Run, score
from slicevos.benchmarks.effort_rules import RULES, Target
from slicevos.errors import InputError
from slicevos.io import LabelSchema, load_labels, load_volume
from slicevos.labeler.state import Labeler, open_labeler
from slicevos.metrics.overlap import dice

MODES = ("organ", "slice")
STARTS = ("middle", "range")
MIN_SLICES = 20


@dataclass
class Case:
    """A scan (NIfTI file or DICOM folder) and its true labels on the canonical (D, H, W) grid;
    ``spacing`` (dz, dy, dx) in mm."""

    name: str
    scan: Path
    truth: np.ndarray
    spacing: tuple[float, float, float]


def scan_name(scan: Path) -> str:
    """``folder/ct.nii.gz`` -> ``folder``; ``name.nii.gz`` -> ``name``; a DICOM folder's name."""
    name = scan.name
    if name in ("ct.nii.gz", "ct.nii"):
        return scan.resolve().parent.name
    return name.removesuffix(".gz").removesuffix(".nii")


def load_case(scan: str | Path, labels: str | Path, schema: LabelSchema,
              organs: Sequence[int] | None = None) -> Case:
    """Read a scan and its label file; InputError naming both when their grids differ.
    ``organs``: keep only these ids in the truth (others become background)."""
    scan, labels = Path(scan), Path(labels)
    volume = load_volume(scan)
    truth, geometry = load_labels(labels, schema=schema)
    if truth.shape != volume.hu.shape:
        raise InputError(labels, f"labels have canonical shape {truth.shape} but scan {scan} "
                         f"has {volume.hu.shape}", "pass the label file made on this scan's grid")
    load_labels(labels, reference=volume)  # the affine must match too
    if organs is not None:
        truth = np.where(np.isin(truth, list(organs)), truth, 0).astype(np.uint8)
    return Case(scan_name(scan), scan, truth, volume.geometry.spacing)


def folder_cases(data: Path, schema: LabelSchema, names: Sequence[str] | None = None,
                 organs: Sequence[int] | None = None) -> Iterator[Case]:
    """The subfolders of ``data`` with ``ct.nii.gz`` and ``label_flare.nii.gz`` and at least
    ``MIN_SLICES`` slices (``names``: only these folders)."""
    if not data.is_dir():
        raise InputError(data, "data folder does not exist",
                         "pass --data FOLDER or --scans SCAN --labels LABELS")
    for label_file in sorted(data.glob("*/label_flare.nii.gz")):
        folder = label_file.parent
        if (names and folder.name not in names) or not (folder / "ct.nii.gz").is_file():
            continue
        case = load_case(folder / "ct.nii.gz", label_file, schema, organs)
        if len(case.truth) >= MIN_SLICES:
            yield case


def extent(mask_per_slice: np.ndarray) -> tuple[int, int]:
    """First and last index where the (D,) bool is True."""
    hit = np.flatnonzero(mask_per_slice)
    return int(hit[0]), int(hit[-1])


def lower_median(mask_per_slice: np.ndarray) -> int:
    """The middle slice where the (D,) bool is True (the lower one of an even count)."""
    hit = np.flatnonzero(mask_per_slice)
    return int(hit[(len(hit) - 1) // 2])


def correct(labeler: Labeler, truth: np.ndarray, z: int, organ: int | None) -> int:
    """Redraw slice ``z`` as the truth: one organ (``paint_organ``) or, with organ None, the
    whole slice (``paint_slice``). Returns the pixels the edit changes (before propagation)."""
    before = labeler.session.labels[z]
    if organ is None:
        pixels = int((before != truth[z]).sum())
        labeler.paint_slice(z, truth[z])
    else:
        mask = truth[z] == organ
        pixels = int(((before == organ) != mask).sum())
        labeler.paint_organ(z, organ, mask)
    return pixels


def propagate(labeler: Labeler) -> float:
    """Propagate in the page's background thread and wait; the seconds it took."""
    started = time.perf_counter()
    labeler.start_propagation()
    labeler.wait()
    seconds = time.perf_counter() - started
    if labeler.error:
        raise RuntimeError(f"propagation failed in the labeller: {labeler.error}")
    return seconds


def work_ahead(labeler: Labeler) -> float:
    """Wait for the page's work ahead of the next correction; the seconds it took."""
    started = time.perf_counter()
    labeler.wait_work_ahead()
    return time.perf_counter() - started


@contextmanager
def labeler_for(case: Case, schema: LabelSchema) -> Iterator[Labeler]:
    """A fresh flow-engine labeller on the scan, its output and autosave in a temp folder
    that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="slicevos_effort_") as tmp:
        labeler = open_labeler(case.scan, Path(tmp) / "labels.nii.gz", schema, engine="flow")
        try:
            yield labeler
        finally:
            labeler.close()


class _Session:
    """One simulated run: the labeller, the keys per target and the run's records."""

    def __init__(self, labeler: Labeler, case: Case, schema: LabelSchema, run: Run,
                 ahead: bool = True) -> None:
        self.labeler, self.case, self.schema, self.run = labeler, case, schema, run
        self.ahead = ahead
        self.keys: dict[int | None, set[int]] = {}
        self.scored: np.ndarray | None = None  # the labels of the last record

    def edit(self, step: int, organ: int | None, z: int, rule: str,
             fell_back: bool = False, timed: bool = True) -> None:
        pixels = correct(self.labeler, self.case.truth, z, organ)
        self.keys.setdefault(organ, set()).add(z)
        seconds = propagate(self.labeler) if timed else None
        after = (dice(self.case.truth == organ, self.labeler.session.labels == organ)
                 if timed and organ is not None else None)
        self.run.corrections.append(Correction(step, organ, z, pixels, seconds, rule,
                                               fell_back, after, self.work_ahead()
                                               if timed else None))

    def work_ahead(self) -> float | None:
        return work_ahead(self.labeler) if self.ahead else None

    def record(self) -> None:
        """Every organ's key count, DSC and NSD now (one more step on each curve); organs
        whose voxels did not change since the last record keep their scores (NSD is slow)."""
        labels = self.labeler.session.labels.copy()
        changed = None
        if self.scored is not None:
            diff = self.scored != labels
            changed = set(np.unique(self.scored[diff]).tolist() + np.unique(labels[diff]).tolist())
        for organ, curve in self.run.curves.items():
            if changed is None or organ in changed:
                d, s = score(self.case.truth, labels, organ, self.case.spacing,
                             self.schema.by_id(organ).nsd_tolerance_mm)
            else:
                d, s = curve.dsc[-1], curve.nsd[-1]
            curve.keys.append(len(self.keys.get(organ if self.run.mode == "organ" else None,
                                                ())))
            curve.dsc.append(d)
            curve.nsd.append(s)
        self.scored = labels

    def pick(self, organ: int | None, rule: str, step: int,
             extents: dict[int | None, tuple[int, int]]) -> tuple[int | None, bool, str]:
        """(z or None, fell back, rule name) for the target at ``step``."""
        first, last = extents[organ]
        keys = self.keys.setdefault(organ, set())
        if self.run.start == "range" and step <= 2:
            # the extent control: "not here" just past each end (the end slice itself where
            # the organ reaches the volume's edge)
            depth = len(self.case.truth)
            z = max(first - 1, 0) if step == 1 else min(last + 1, depth - 1)
            return (None if z in keys else z), False, "range"
        truth, labels = self.case.truth, self.labeler.session.labels
        wrong = labels != truth if organ is None else (labels == organ) != (truth == organ)
        z, fell_back = RULES[rule](Target(wrong, first, last, keys, self.labeler, organ))
        return z, fell_back, rule


def simulate(case: Case, schema: LabelSchema, mode: str, rule: str, start: str = "middle",
             max_keys: int = 8, stop_dsc: float = 0.99, work_ahead: bool = True) -> Run:
    """One simulated session (see the module doc); the run's curves and corrections."""
    check_choice(mode, MODES, "mode")
    check_choice(rule, tuple(RULES), "rule")
    check_choice(start, STARTS, "start")
    truth = case.truth
    present = [int(o) for o in np.unique(truth) if o and int(o) in schema.ids]
    if not present:
        raise InputError(case.scan, "the labels hold no organ of the schema to annotate",
                         f"pass labels with {schema.name} organs (or other --organs)")
    run = Run(case.name, mode, rule, start, {o: schema.by_id(o).name for o in present},
              {o: Curve() for o in present})
    per_slice = {o: (truth == o).any(axis=(1, 2)) for o in present}
    extents: dict[int | None, tuple[int, int]] = {o: extent(m) for o, m in per_slice.items()}
    extents[None] = extent(np.any(list(per_slice.values()), axis=0))
    targets: list[int | None] = list(present) if mode == "organ" else [None]
    with labeler_for(case, schema) as labeler:
        session = _Session(labeler, case, schema, run, work_ahead)
        for target in targets:
            z = (lower_median(per_slice[target]) if target is not None
                 else sum(extents[None]) // 2)
            session.edit(0, target, z, "start", timed=False)
        run.start_seconds = propagate(labeler)
        run.start_ahead_seconds = session.work_ahead()
        session.record()
        for step in range(1, max_keys + 1):
            for target in targets:
                if _done(run, target, stop_dsc):
                    continue
                z, fell_back, picked_by = session.pick(target, rule, step, extents)
                if z is not None:
                    session.edit(step, target, z, picked_by, fell_back)
            session.record()
    return run


def _done(run: Run, target: int | None, stop_dsc: float) -> bool:
    curves = run.curves.values() if target is None else [run.curves[target]]
    return all(c.dsc[-1] >= stop_dsc for c in curves)


def check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise InputError(None, f"unknown {what} {value!r}", f"use one of {', '.join(choices)}")


def run_benchmark(cases: Sequence[Case], schema: LabelSchema, modes: Sequence[str],
                  rules: Sequence[str], start: str = "middle", max_keys: int = 8,
                  stop_dsc: float = 0.99,
                  progress: Callable[[Sequence], Sequence] = lambda items: items,
                  work_ahead: bool = True) -> list[Run]:
    """Every case x mode x rule (``progress`` wraps that list, e.g. tqdm)."""
    for value in modes:
        check_choice(value, MODES, "mode")
    for value in rules:
        check_choice(value, tuple(RULES), "rule")
    check_choice(start, STARTS, "start")
    jobs = [(c, m, r) for c in cases for m in modes for r in rules]
    return [simulate(c, schema, m, r, start, max_keys, stop_dsc, work_ahead)
            for c, m, r in progress(jobs)]
