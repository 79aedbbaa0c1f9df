"""The learned path on real CT, leave one patient out (``slicevos-real-folds``).

The shared real volumes (``../shared/data/real``, see its DATA.md) hold three patients with
multi-organ labels (:data:`PATIENTS`) and two scans with one organ drawn (:data:`PARTIAL`).
Fold ``H`` holds patient ``H`` out: the reference pair (and the localizer) train on the other
patients plus the partial scans, then are judged on ``H``. ``example_ct_sm30`` is never used:
it is a crop of ``example_ct_full112`` (the same patient).

Per fold, under ``OUT/fold-<H>/``: ``dataset/`` (links to the shared files, FLARE layout, with
``annotations.yaml`` for the partial scans), ``cache/`` (the slice cache), ``reference/`` and
``localizer/`` (training runs; a rerun resumes them), ``result.json``. Rows on ``H``, per organ
present in its labels (FLARE DSC and NSD, every slice):

- ``reference``: the pair on every slice;
- ``automatic``: reference key slices, then the flow engine (``slicevos-infer --reference``);
- ``oracle keys + flow``: the true labels on the same key slices, then flow; this separates key
  errors from propagation errors;
- ``oracle keys + copy`` and ``oracle keys + contour``: the same true keys, nearest-key copy
  and ITK's morphological contour interpolation (the simple baselines; the latter needs the
  ``interp`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes

PATIENTS = ("example_ct_full112", "example_ct_dicom20", "lidc_chest_abdomen133")
PARTIAL = {"aorta_report_crop": ("aorta",), "ct3slice": ("liver",)}
IMAGE, LABELS = "ct.nii.gz", "label_flare.nii.gz"
# Organs that make a slice "abdomen" for the localizer: the esophagus, aorta and IVC run
# through the chest and neck of the chest CT, so they would call every slice abdominal.
LOCALIZER_ORGANS = ("liver", "right_kidney", "spleen", "pancreas", "gallbladder",
                    "right_adrenal_gland", "left_adrenal_gland", "stomach", "duodenum",
                    "left_kidney")


@dataclass(frozen=True)
class FoldSettings:
    """``reference_config`` / ``localizer_config``: YAML paths (None skips that model);
    ``*_iterations``: override the configs' ``train.iterations`` (None keeps them);
    ``assignments``: extra ``key=value`` overrides of the reference config."""

    reference_config: str | None = "configs/reference/real_cpu.yaml"
    localizer_config: str | None = "configs/localizer/real_cpu.yaml"
    reference_iterations: int | None = None
    localizer_iterations: int | None = None
    assignments: tuple[str, ...] = ()
    progress: bool = True


def check_real_dir(real_dir: Path, cases: Sequence[str]) -> None:
    for case in cases:
        for name in (IMAGE, LABELS):
            if not (real_dir / case / name).is_file():
                raise InputError(real_dir / case / name, "missing real volume file",
                                 "point --real at ../shared/data/real (see its DATA.md)")


def make_dataset(real_dir: Path, cases: Sequence[str], out: Path,
                 partial: dict[str, tuple[str, ...]]) -> Path:
    """A FLARE-layout folder of links to the shared files (nothing is copied); ``partial``
    names the organs drawn in partially labeled cases (``annotations.json``)."""
    check_real_dir(real_dir, cases)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for case in cases:
        for link, target in ((out / "imagesTr" / f"{case}_0000.nii.gz", real_dir / case / IMAGE),
                             (out / "labelsTr" / f"{case}.nii.gz", real_dir / case / LABELS)):
            if not link.is_symlink():
                link.symlink_to(target.resolve())
    drawn = {case: list(partial[case]) for case in cases if case in partial}
    text = json.dumps(drawn, indent=1, sort_keys=True) + "\n"
    path = out / "annotations.json"
    if not path.is_file() or path.read_text() != text:
        atomic_write_bytes(path, text.encode())
    return out


def _train(trainer_cls: type, config_cls: type, config_path: str, out_dir: Path, cache: Path,
           iterations: int | None, assignments: Sequence[str], progress: bool) -> tuple[Path, float]:
    """Train (or resume) one run; returns its last checkpoint and the seconds spent training
    it, summed over every session (``OUT_DIR/train_seconds.json``)."""
    from slicevos.cli.training_args import load_training_config

    named = [f"data.cache_dir={cache}", f"train.out_dir={out_dir}", f"train.progress={progress}"]
    if iterations is not None:
        named.append(f"train.iterations={iterations}")
    config = load_training_config(config_path, config_cls, [*assignments, *named])
    last, clock = out_dir / "last.pt", out_dir / "train_seconds.json"
    start = time.perf_counter()
    trainer_cls(config, resume=last.is_file()).fit()
    spent = time.perf_counter() - start
    if clock.is_file():
        spent += float(json.loads(clock.read_text())["seconds"])
    atomic_write_bytes(clock, json.dumps({"seconds": spent}).encode())
    return last, spent


def train_reference(settings: FoldSettings, cache: Path, out_dir: Path) -> tuple[Path, float]:
    from slicevos.training.reference import ReferenceConfig, ReferenceTrainer

    return _train(ReferenceTrainer, ReferenceConfig, settings.reference_config, out_dir, cache,
                  settings.reference_iterations, settings.assignments, settings.progress)


def train_localizer(settings: FoldSettings, cache: Path, out_dir: Path) -> tuple[Path, float]:
    from slicevos.training.localizer import LocalizerConfig, LocalizerTrainer

    return _train(LocalizerTrainer, LocalizerConfig, settings.localizer_config, out_dir, cache,
                  settings.localizer_iterations, (), settings.progress)


def _scores(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float], schema: Any,
            classes: Sequence[int]) -> dict[str, dict[str, float]]:
    from slicevos.metrics.flare import score_case

    scores = score_case(truth, pred, spacing, schema, classes)
    return {name: {"dsc": float(s.dsc), "nsd": float(s.nsd)} for name, s in scores.items()}


def evaluate_reference(checkpoint: Path, case_dir: Path) -> dict[str, Any]:
    """The rows of the module doc on one held-out scan (DSC and NSD per organ it has)."""
    from slicevos.benchmarks.baselines import contour_interpolation, nearest_key_copy
    from slicevos.inference.config import InferenceConfig
    from slicevos.inference.pipeline import VolumePipeline
    from slicevos.io.loader import load_volume
    from slicevos.io.nifti import load_labels
    from slicevos.preprocessing.position import relative_position
    from slicevos.preprocessing.windowing import window_volume

    volume = load_volume(case_dir / IMAGE)
    truth, _ = load_labels(case_dir / LABELS, volume)
    pipeline = VolumePipeline.from_checkpoints(None, reference=checkpoint,
                                               config=InferenceConfig(backend="torch"))
    schema = pipeline.schema
    present = [c.id for c in schema.classes if (truth == c.id).any()]
    rows: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def timed(name: str, run: Callable[[], np.ndarray]) -> None:
        start = time.perf_counter()
        pred = run()
        timings[name] = time.perf_counter() - start
        rows[name] = _scores(truth, pred, volume.spacing, schema, present)

    segmenter = pipeline.reference
    segmenter.input_spacing = tuple(volume.spacing[1:])
    depth = volume.num_slices
    timed("reference", lambda: segmenter.segment(
        window_volume(volume.hu, segmenter.info.windows),
        relative_position(np.arange(depth), depth)))
    auto: dict[str, Any] = {}

    def automatic() -> np.ndarray:
        result = pipeline.run(volume)
        auto["keys"] = result.key_slices
        return result.labels

    timed("automatic", automatic)
    keys = {z: truth[z] for z in auto["keys"]}
    if keys:
        timed("oracle keys + flow", lambda: pipeline.run(volume, keys=keys).labels)
        timed("oracle keys + copy", lambda: nearest_key_copy(keys, depth))
        if importlib.util.find_spec("itk") is not None:  # the interp extra
            timed("oracle keys + contour", lambda: contour_interpolation(keys, depth))
    return {"case": case_dir.name, "organs": [schema.by_id(c).name for c in present],
            "key_slices": [int(z) for z in auto["keys"]], "rows": rows, "seconds": timings}


def evaluate_localizer(checkpoint: Path, case_dir: Path, organs: Sequence[str] = LOCALIZER_ORGANS,
                       threshold: float = 0.5, margin_slices: int = 3) -> dict[str, Any]:
    """z-range error (slices) of the localizer against the slices holding ``organs`` in the
    truth, the share of slices it skips, and the slices it loses (outside its range): those of
    ``organs``, and those of any label (the esophagus, aorta and IVC reach into the chest, where
    the localizer is meant to cut)."""
    from slicevos.data.localizer_data import organ_ids
    from slicevos.inference.localizer import Localizer, predict_z_range
    from slicevos.io.labels import get_schema
    from slicevos.io.loader import load_volume
    from slicevos.io.nifti import load_labels

    volume = load_volume(case_dir / IMAGE)
    truth, _ = load_labels(case_dir / LABELS, volume)
    ids = organ_ids(get_schema("flare22"), organs)
    organ_slices = np.flatnonzero(np.isin(truth, ids).any(axis=(1, 2)))
    any_organ = np.flatnonzero((truth > 0).any(axis=(1, 2)))
    scores = Localizer.from_checkpoint(checkpoint, "cpu").slice_scores_hu(volume.hu)
    found = predict_z_range(scores, threshold, margin_slices)
    depth = volume.num_slices
    low, high = found if found is not None else (0, depth)
    true_low, true_high = int(organ_slices[0]), int(organ_slices[-1]) + 1

    def lost(slices: np.ndarray) -> int:
        return int(((slices < low) | (slices >= high)).sum())

    return {"case": case_dir.name, "depth": depth, "range": [int(low), int(high)],
            "true_range": [true_low, true_high], "found": found is not None,
            "z_error_low": abs(int(low) - true_low), "z_error_high": abs(int(high) - true_high),
            "skipped_share": 1 - (high - low) / depth,
            "organ_slices_lost": lost(organ_slices), "organ_slices": int(len(organ_slices)),
            "labeled_slices_lost": lost(any_organ), "labeled_slices": int(len(any_organ))}


def run_fold(real_dir: Path, held_out: str | None, out: Path, settings: FoldSettings,
             patients: Sequence[str] = PATIENTS,
             partial: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """One fold (``held_out`` None: train on every volume, evaluate nothing). ``patients``:
    folders with every organ drawn; ``partial``: folder -> the organs drawn in it (default
    :data:`PARTIAL`); all are under ``real_dir``, laid out as the shared real data."""
    from slicevos.data.cache_build import PrepareConfig, prepare_cache

    partial = PARTIAL if partial is None else partial
    name = f"fold-{held_out}" if held_out else "all"
    fold_dir = out / name
    train_cases = [c for c in (*patients, *partial) if c != held_out]
    dataset = make_dataset(real_dir, train_cases, fold_dir / "dataset", partial)
    cache = fold_dir / "cache"
    prepare_cache(dataset, cache, replace(PrepareConfig(), schema="flare22"),
                  progress=settings.progress)
    result: dict[str, Any] = {"held_out": held_out, "train_cases": train_cases}
    if settings.reference_config:
        checkpoint, seconds = train_reference(settings, cache, fold_dir / "reference")
        result.update(reference_checkpoint=str(checkpoint), reference_train_seconds=seconds)
        if held_out:
            result["evaluation"] = evaluate_reference(checkpoint, real_dir / held_out)
    if settings.localizer_config:
        checkpoint, seconds = train_localizer(settings, cache, fold_dir / "localizer")
        result.update(localizer_checkpoint=str(checkpoint), localizer_train_seconds=seconds)
        if held_out:
            result["localizer"] = evaluate_localizer(checkpoint, real_dir / held_out)
    atomic_write_bytes(fold_dir / "result.json", json.dumps(result, indent=1).encode())
    return result
