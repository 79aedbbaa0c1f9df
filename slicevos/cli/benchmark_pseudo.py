"""slicevos-benchmark-pseudo: does the consensus score rank pseudo-label quality?

For every case of a pseudo-label folder: the consensus score (recomputed from members.npz, for
all members or the ones named by --members) and the true DSC of the fused pseudo-label
(majority vote of the same members) against ground truth; then the Spearman correlation.

Ground truth: ``--phantoms DATASET`` regenerates the phantoms of a slicevos-make-phantoms
folder from its dataset.json (unlabeled phantoms have no label file); ``--real DIR`` reads
``DIR/<case>/label_flare.nii.gz``. With ``--real`` and ``--checkpoints`` the folder is first
generated (resumable) from ``DIR/<case>/ct.nii.gz`` of every case with >= --min-slices slices.

True DSC of a case: mean over classes of the per-class 3D DSC, over the classes present in
the truth or the fused label (phantoms: every schema class is annotated), or only the classes
present in the truth (``--real``: a file may label a few organs only). Per-organ correlation:
over (case, organ) pairs of such classes that some member predicts (this mostly tells organs
apart: liver vs adrenal), and within each organ across cases (mean of the organs' rho).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from slicevos.cli.common import run_cli
from slicevos.config import from_dict
from slicevos.data.phantom import PhantomConfig, make_phantom
from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes
from slicevos.io.nifti import load_labels
from slicevos.metrics.overlap import dice_per_class
from slicevos.pseudo.consensus import VARIANTS, consensus_score, fuse_members
from slicevos.pseudo.folder import complete_case_dirs, load_members, read_case_record

REAL_IMAGE, REAL_LABELS = "ct.nii.gz", "label_flare.nii.gz"


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman rank correlation (rho, two-sided p); NaN for fewer than 3 pairs or a constant
    input."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    from scipy.stats import spearmanr

    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def phantom_seeds(dataset: Path) -> tuple[dict[str, int], PhantomConfig]:
    """Case id -> seed of every phantom of a make-phantoms folder, and its generator config."""
    path = dataset / "dataset.json"
    if not path.is_file():
        raise InputError(path, "no dataset.json", "pass a folder written by slicevos-make-phantoms")
    info = json.loads(path.read_text())
    config = from_dict(PhantomConfig, info["generator"]["config"], str(path))
    cases = info["training"] + info["unlabeled"]
    return {c["case"]: int(c["seed"]) for c in cases}, config


def _truth_loader(args: argparse.Namespace) -> Callable[[str], np.ndarray | None]:
    """Case id -> canonical (D, H, W) ground truth, or None when there is none."""
    if args.phantoms:
        seeds, config = phantom_seeds(Path(args.phantoms))
        return lambda case_id: make_phantom(seeds[case_id], config).labels if case_id in seeds else None
    root = Path(args.real)
    return lambda case_id: (load_labels(root / case_id / REAL_LABELS)[0]
                            if (root / case_id / REAL_LABELS).is_file() else None)


def _generate_real(args: argparse.Namespace) -> None:
    from slicevos.inference.ensemble import predict_members, reference_members
    from slicevos.io.loader import load_volume
    from slicevos.pseudo.generation import PseudoCase, generate_pseudo_labels
    from slicevos.training.distributed import resolve_device

    root = Path(args.real)
    cases = [PseudoCase(d.name, d / REAL_IMAGE) for d in sorted(root.iterdir())
             if (d / REAL_IMAGE).is_file() and (d / REAL_LABELS).is_file()
             and load_volume(d / REAL_IMAGE).num_slices >= args.min_slices]
    members = reference_members(args.checkpoints, args.tta, resolve_device(args.device))
    schema = members[0].segmenter.info.schema
    generate_pseudo_labels(cases, lambda v: predict_members(v, members),
                           [m.identity() for m in members], args.pseudo_dir, schema)


def score_cases(args: argparse.Namespace) -> list[dict]:
    """One row per case with ground truth: consensus, true DSC, per-class pairs."""
    truth_of = _truth_loader(args)
    rows = []
    for case_dir in complete_case_dirs(args.pseudo_dir):
        record = read_case_record(case_dir)
        truth = truth_of(record.case_id)
        if truth is None:
            continue
        labels = load_members(record)
        names = json.loads((case_dir / "case.json").read_text())["members"]
        if args.members:
            unknown = sorted(set(args.members) - set(names))
            if unknown:
                raise InputError(case_dir, f"members {unknown} not among {names}", "check --members")
            labels = labels[[names.index(n) for n in args.members]]
        schema = record.schema
        score = consensus_score(labels, schema.ids, args.variant)
        fused = fuse_members(labels, schema.num_classes)
        if truth.shape != fused.shape:
            raise InputError(case_dir, f"truth {truth.shape} vs pseudo-label {fused.shape}",
                             "pair the pseudo folder with the dataset it was generated from")
        in_truth = set(np.unique(truth).tolist()) - {0}
        classes = sorted(in_truth if args.real else in_truth | set(np.unique(fused).tolist()) - {0})
        dice = dice_per_class(truth, fused, classes)
        rows.append({"case_id": record.case_id, "consensus": score.volume,
                     "true_dice": float(np.mean(list(dice.values()))) if dice else float("nan"),
                     "pairs": [(c, score.per_class[c], dice[c]) for c in classes if c in score.present]})
    if not rows:
        raise InputError(args.pseudo_dir, "no case has ground truth", "check --phantoms / --real")
    return rows


def report(rows: list[dict]) -> str:
    lines = [f"{'case':<24} {'consensus':>9} {'true DSC':>9}"]
    lines += [f"{r['case_id']:<24} {r['consensus']:>9.4f} {r['true_dice']:>9.4f}" for r in rows]
    rho, p = spearman([r["consensus"] for r in rows], [r["true_dice"] for r in rows])
    pairs = [pair for r in rows for pair in r["pairs"]]
    rho_o, p_o = spearman([a for _, a, _ in pairs], [b for _, _, b in pairs])
    by_class = {c: [(a, b) for k, a, b in pairs if k == c] for c in {k for k, _, _ in pairs}}
    within = [spearman([a for a, _ in v], [b for _, b in v])[0] for v in by_class.values()
              if len(v) >= 3]
    within = [w for w in within if not np.isnan(w)]
    lines += [f"volumes: n={len(rows)}  Spearman rho={rho:.3f} (p={p:.3g})  mean consensus "
              f"{np.mean([r['consensus'] for r in rows]):.4f}  mean true DSC "
              f"{np.nanmean([r['true_dice'] for r in rows]):.4f}",
              f"organs:  n={len(pairs)}  Spearman rho={rho_o:.3f} (p={p_o:.3g}) over all "
              f"(case, organ) pairs; within one organ across cases, mean rho="
              f"{np.mean(within) if within else float('nan'):.3f} over {len(within)} organs"]
    return "\n".join(lines)


def _body(args: argparse.Namespace) -> int:
    if bool(args.phantoms) == bool(args.real):
        raise InputError(None, "give exactly one of --phantoms and --real", "see --help")
    if args.checkpoints:
        if not args.real:
            raise InputError("--checkpoints", "generation here is for --real only",
                             "run slicevos-generate-pseudo-labels on the phantom folder")
        _generate_real(args)
    rows = score_cases(args)
    print(report(rows))
    if args.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["case_id", "consensus", "true_dice"])
        writer.writerows([r["case_id"], f"{r['consensus']:.6f}", f"{r['true_dice']:.6f}"] for r in rows)
        atomic_write_bytes(args.csv, buf.getvalue().encode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-pseudo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pseudo_dir", help="pseudo-label folder (generation output)")
    parser.add_argument("--phantoms", help="slicevos-make-phantoms folder the cases come from")
    parser.add_argument("--real", help="folder of <case>/ct.nii.gz + label_flare.nii.gz")
    parser.add_argument("--checkpoints", nargs="+", help="with --real: generate first")
    parser.add_argument("--tta", nargs="*", default=[], choices=("flip_lr", "flip_ud"))
    parser.add_argument("--min-slices", type=int, default=20, help="with --real (default 20)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--members", nargs="+", help="score these members only (names)")
    parser.add_argument("--variant", default="dice_mean", choices=VARIANTS)
    parser.add_argument("--csv", help="write the per-case table here")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
