"""slicevos-benchmark-pseudo: does the consensus score rank pseudo-label quality?

For every case of a pseudo-label folder: the consensus score (recomputed from members.npz for
each member set) and the true DSC of the fused pseudo-label (plurality vote of the same
members) against ground truth. Per member set: Spearman and Kendall between score and true DSC
over volumes; the true DSC of the accepted vs the rejected volumes under the acceptance rule
(--top-fraction / --threshold); precision and recall of "true DSC >= X" among the accepted;
the same for a few other rules; the true DSC of the organs kept and dropped by a few per-organ
cutoffs; and the mean per pool condition.

Ground truth (the members only ever see the images): ``--pool POOL`` a spread pool
(``slicevos.pseudo.spread``; ``--pool-config YAML`` writes it first), truth in POOL/truth/;
(``--pool`` / ``--pool-config`` repeat: several pools, paired in order, scored as one set; give
their conditions distinct ``prefix`` es so case ids do not clash); ``--phantoms DATASET``
regenerates the phantoms of a slicevos-make-phantoms folder;
``--real DIR`` reads ``DIR/<case>/label_flare.nii.gz`` (cases with >= --min-slices slices).
Several sources may be combined. With ``--checkpoints`` the folder is first generated
(resumable) from the sources' unlabeled images, with every network of --networks and every
--tta entry (flip or slice position transform) as members (and with --engines the full
pipeline per checkpoint and engine).

``--variant`` takes several variants (the report is the first one's) and adds a table of their
Spearman per member set; ``--per-pool`` scores every ``--pool`` alone in that table, with each
variant's worst pool: the consensus default is chosen by its worst pool, not by its mean over
pools pooled together (docs/pseudo_labels.md).

True DSC of a case: mean over classes of the per-class 3D DSC, over the classes present in the
truth or the fused label (phantoms: every schema class is annotated), or only the classes
present in the truth (``--real``: a file may label a few organs only).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from slicevos.benchmarks.pseudo_pools import kendall, pool_names, pool_table, spearman
from slicevos.cli.common import run_cli
from slicevos.config import from_dict
from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes
from slicevos.io.nifti import load_labels
from slicevos.metrics.overlap import dice_per_class
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.pseudo.consensus import DEFAULT_VARIANT, VARIANTS, consensus_score, fuse_members
from slicevos.pseudo.filtering import FilterConfig, score_cutoff
from slicevos.pseudo.folder import complete_case_dirs, load_members, read_case_record
from slicevos.pseudo.spread import TRUTH_DIR, load_spread_config, pool_conditions, write_pool

# = slicevos.inference.reference.ensemble.TTA_CHOICES (not imported here: that loads torch)
TTA_CHOICES = ("flip_lr", "flip_ud", "pos_shift_up", "pos_shift_down", "pos_none")
REAL_IMAGE, REAL_LABELS = "ct.nii.gz", "label_flare.nii.gz"
OTHER_RULES = (FilterConfig(top_fraction=0.25), FilterConfig(top_fraction=0.5),
               FilterConfig(top_fraction=0.75))
ORGAN_CUTOFFS = (0.3, 0.5, 0.7)
Truth = Callable[[str], "tuple[np.ndarray, bool] | None"]  # case -> (labels, only truth classes)


def phantom_seeds(dataset: Path) -> tuple[dict[str, int], PhantomConfig]:
    """Case id -> seed of every phantom of a make-phantoms folder, and its generator config."""
    path = dataset / "dataset.json"
    if not path.is_file():
        raise InputError(path, "no dataset.json", "pass a folder written by slicevos-make-phantoms")
    info = json.loads(path.read_text())
    config = from_dict(PhantomConfig, info["generator"]["config"], str(path))
    cases = info["training"] + info["unlabeled"]
    return {c["case"]: int(c["seed"]) for c in cases}, config


def _truth_sources(args: argparse.Namespace) -> list[Truth]:
    """One loader per source: case id -> (canonical (D, H, W) truth, score truth classes only)."""
    sources: list[Truth] = []
    if args.phantoms:
        seeds, config = phantom_seeds(Path(args.phantoms))
        sources.append(lambda c: (make_phantom(seeds[c], config).labels, False) if c in seeds
                       else None)
    for pool in args.pool or ():
        sources.append(_pool_truth(Path(pool) / TRUTH_DIR))
    if args.real:
        root = Path(args.real)
        sources.append(lambda c: (load_labels(root / c / REAL_LABELS)[0], True)
                       if (root / c / REAL_LABELS).is_file() else None)
    return sources


def _pool_truth(truth_dir: Path) -> Truth:
    return lambda c: ((load_labels(truth_dir / f"{c}.nii.gz")[0], False)
                      if (truth_dir / f"{c}.nii.gz").is_file() else None)


def _generation_cases(args: argparse.Namespace, schema) -> list:  # noqa: ANN001
    from slicevos.io.loader import load_volume
    from slicevos.pseudo.generation import PseudoCase, cases_from_inputs

    folders = [d for d in (args.phantoms, *(args.pool or ())) if d]
    cases = cases_from_inputs(folders, schema) if folders else []
    if args.real:
        root = Path(args.real)
        cases += [PseudoCase(d.name, d / REAL_IMAGE) for d in sorted(root.iterdir())
                  if (d / REAL_IMAGE).is_file() and (d / REAL_LABELS).is_file()
                  and load_volume(d / REAL_IMAGE).num_slices >= args.min_slices]
    return cases


def _generate(args: argparse.Namespace) -> None:
    from slicevos.inference.reference.ensemble import (
        pipeline_members,
        predict_members,
        reference_members,
    )
    from slicevos.pseudo.generation import generate_pseudo_labels
    from slicevos.training.distributed import resolve_device

    device = resolve_device(args.device)
    members = reference_members(args.checkpoints, args.tta, device, networks=args.networks)
    schema = members[0].segmenter.info.schema
    if args.engines:
        members += pipeline_members(args.checkpoints, args.engines, args.propagation, device)
    generate_pseudo_labels(_generation_cases(args, schema), lambda v: predict_members(v, members),
                           [m.identity() for m in members], args.pseudo_dir, schema,
                           progress=False)


def parse_member_sets(specs: Sequence[str] | None) -> dict[str, list[str] | None]:
    """``NAME=m1,m2`` specs -> name -> member names; no spec: ``{"all": None}`` (every member)."""
    if not specs:
        return {"all": None}
    sets: dict[str, list[str] | None] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        names = [m for m in members.split(",") if m]
        if not sep or not name or len(names) < 2:
            raise InputError("--member-set", f"{spec!r} is not NAME=member,member[,...]",
                             "e.g. --member-set nets=ckpt0.a,ckpt0.b (2+ members)")
        sets[name] = names
    return sets


def _case_row(labels: np.ndarray, names: list[str], chosen: list[str] | None, schema,  # noqa: ANN001
              truth: np.ndarray, truth_only: bool, variants: Sequence[str], where: Path) -> dict:
    if chosen is not None:
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise InputError(where, f"members {unknown} not among {names}", "check --member-set")
        labels = labels[[names.index(n) for n in chosen]]
    fused = fuse_members(labels, schema.num_classes)
    scores = {v: consensus_score(labels, schema.ids, v, fused=fused) for v in variants}
    score = scores[variants[0]]
    if truth.shape != fused.shape:
        raise InputError(where, f"truth {truth.shape} vs pseudo-label {fused.shape}",
                         "pair the pseudo folder with the dataset it was generated from")
    in_truth = set(np.unique(truth).tolist()) - {0}
    classes = sorted(in_truth if truth_only else in_truth | set(np.unique(fused).tolist()) - {0})
    dice = dice_per_class(truth, fused, classes)
    return {"consensus": score.volume, "scores": {v: x.volume for v, x in scores.items()},
            "true_dice": float(np.mean(list(dice.values()))) if dice else float("nan"),
            "pairs": [(c, score.per_class[c], dice[c]) for c in classes if c in score.present]}


def score_cases(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Member set name -> one row per case with ground truth: consensus (first --variant),
    scores (every --variant), true DSC, per-class (class, consensus, DSC) pairs, condition and
    pool folder name (spread pool cases) or ``""``."""
    sources = _truth_sources(args)
    sets = parse_member_sets(args.member_set)
    conditions = {c: k for pool in args.pool or () for c, k in pool_conditions(pool).items()}
    pools = pool_names(args.pool or ())
    rows: dict[str, list[dict]] = {name: [] for name in sets}
    for case_dir in complete_case_dirs(args.pseudo_dir):
        record = read_case_record(case_dir)
        found = next((t for t in (s(record.case_id) for s in sources) if t is not None), None)
        if found is None:
            continue
        labels = load_members(record)
        names = json.loads((case_dir / "case.json").read_text())["members"]
        for set_name, chosen in sets.items():
            row = _case_row(labels, names, chosen, record.schema, *found, args.variant, case_dir)
            rows[set_name].append({"case_id": record.case_id,
                                   "condition": conditions.get(record.case_id, ""),
                                   "pool": pools.get(record.case_id, ""), **row})
    if not any(rows.values()):
        raise InputError(args.pseudo_dir, "no case has ground truth",
                         "check --pool / --phantoms / --real")
    return rows


def rule_name(config: FilterConfig) -> str:
    return (f"threshold {config.threshold:g}" if config.threshold is not None
            else f"top {config.top_fraction:g}")


def acceptance(rows: list[dict], config: FilterConfig, good: float) -> dict[str, float]:
    """Accepted (score >= the rule's cutoff) vs rejected: mean true DSC of each, and precision
    / recall of "true DSC >= good" among the accepted."""
    scores = np.array([r["consensus"] for r in rows])
    true = np.array([r["true_dice"] for r in rows])
    accepted = scores >= score_cutoff(scores, config)
    is_good = true >= good
    mean = lambda mask: float(np.nanmean(true[mask])) if mask.any() else float("nan")  # noqa: E731
    hits = int((accepted & is_good).sum())
    return {"accepted": int(accepted.sum()), "rejected": int((~accepted).sum()),
            "dice_accepted": mean(accepted), "dice_rejected": mean(~accepted),
            "precision": hits / max(1, int(accepted.sum())),
            "recall": hits / int(is_good.sum()) if is_good.any() else float("nan")}


def organ_lines(pairs: list[tuple[int, float, float]]) -> list[str]:
    """Per-organ cutoffs (``filter.organ_threshold``): true DSC of the organs kept (consensus
    >= t) and of those left unannotated, over every (case, organ) pair."""
    score = np.array([a for _, a, _ in pairs])
    dice = np.array([b for _, _, b in pairs])
    mean = lambda m: float(dice[m].mean()) if m.any() else float("nan")  # noqa: E731
    lines = [f"   {'organ cutoff':<16} {'kept':>5} {'DSC kept':>8} {'dropped':>7} {'DSC drop':>8}"]
    for cutoff in ORGAN_CUTOFFS:
        kept = score >= cutoff
        lines.append(f"   {cutoff:<16g} {int(kept.sum()):>5} {mean(kept):>8.4f} "
                     f"{int((~kept).sum()):>7} {mean(~kept):>8.4f}")
    return lines


def report_set(name: str, rows: list[dict], rule: FilterConfig, good: float) -> list[str]:
    score = [r["consensus"] for r in rows]
    true = [r["true_dice"] for r in rows]
    rho, p = spearman(score, true)
    tau, p_tau = kendall(score, true)
    pairs = [pair for r in rows for pair in r["pairs"]]
    by_class = {c: [(a, b) for k, a, b in pairs if k == c] for c in {k for k, _, _ in pairs}}
    within = [w for w in (spearman([a for a, _ in v], [b for _, b in v])[0]
                          for v in by_class.values() if len(v) >= 3) if not np.isnan(w)]
    lines = [f"== member set {name}: {len(rows)} volumes, score {min(score):.3f}..{max(score):.3f},"
             f" true DSC {np.nanmin(true):.3f}..{np.nanmax(true):.3f}",
             f"   volumes: Spearman {rho:.3f} (p={p:.2g})  Kendall {tau:.3f} (p={p_tau:.2g})",
             f"   organs within one organ across cases: mean Spearman "
             f"{np.mean(within) if within else float('nan'):.3f} over {len(within)} organs",
             f"   {'rule':<16} {'acc':>4} {'rej':>4} {'DSC acc':>8} {'DSC rej':>8} "
             f"{'margin':>7} {'prec':>5} {'recall':>6}   (good = true DSC >= {good:.3f})"]
    for config in (rule, *(c for c in OTHER_RULES if c != rule)):
        a = acceptance(rows, config, good)
        lines.append(f"   {rule_name(config) + (' *' if config == rule else ''):<16} "
                     f"{a['accepted']:>4} {a['rejected']:>4} {a['dice_accepted']:>8.4f} "
                     f"{a['dice_rejected']:>8.4f} {a['dice_accepted'] - a['dice_rejected']:>7.4f} "
                     f"{a['precision']:>5.2f} {a['recall']:>6.2f}")
    return lines + organ_lines(pairs)


def _condition_table(rows: list[dict]) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["condition"] or "(other)", []).append(r)
    lines = [f"   {'condition':<16} {'n':>2} {'score':>7} {'true DSC':>8}"]
    order = sorted(groups, key=lambda g: -np.mean([r["true_dice"] for r in groups[g]]))
    lines += [f"   {g:<16} {len(groups[g]):>2} {np.mean([r['consensus'] for r in groups[g]]):>7.4f}"
              f" {np.nanmean([r['true_dice'] for r in groups[g]]):>8.4f}" for g in order]
    return lines


def report(rows: dict[str, list[dict]], rule: FilterConfig, good: float | None) -> str:
    """The text report: per-volume table of the first set, then each set's summary."""
    first = next(iter(rows.values()))
    if good is None:
        good = float(np.nanmedian([r["true_dice"] for r in first]))
    names = list(rows)
    lines = [f"{'case':<20} {'condition':<14} " + " ".join(f"{n[:12] + ' sc':>15} {'DSC':>6}"
                                                         for n in names)]
    for i, r in enumerate(first):
        lines.append(f"{r['case_id']:<20} {r['condition']:<14} " + " ".join(
            f"{rows[n][i]['consensus']:>15.4f} {rows[n][i]['true_dice']:>6.3f}" for n in names))
    for name in names:
        lines += report_set(name, rows[name], rule, good)
    if any(r["condition"] for r in first):
        lines += [f"== per condition (member set {names[0]}), best true DSC first"]
        lines += _condition_table(first)
    return "\n".join(lines)


def _write_csv(path: str, rows: dict[str, list[dict]], variants: Sequence[str] = (),
               pools: bool = False) -> None:
    """Per case and member set; ``pool`` and one ``consensus_<variant>`` column per variant are
    appended with ``--per-pool`` or several variants."""
    extra = bool(pools or len(variants) > 1)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["member_set", "case_id", "condition", "consensus", "true_dice"]
                    + (["pool", *(f"consensus_{v}" for v in variants)] if extra else []))
    writer.writerows([name, r["case_id"], r["condition"], f"{r['consensus']:.6f}",
                      f"{r['true_dice']:.6f}"]
                     + ([r["pool"], *(f"{r['scores'][v]:.6f}" for v in variants)] if extra else [])
                     for name, set_rows in rows.items() for r in set_rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _body(args: argparse.Namespace) -> int:
    args.variant = list(dict.fromkeys(args.variant))
    if args.pool_config:
        if len(args.pool_config) != len(args.pool or ()):
            raise InputError("--pool-config", f"{len(args.pool_config)} pool config(s) for "
                             f"{len(args.pool or ())} --pool folder(s)",
                             "give one --pool DIR per --pool-config YAML, in the same order")
        for config, pool in zip(args.pool_config, args.pool, strict=True):
            write_pool(load_spread_config(config), pool, progress=False)
    if not (args.phantoms or args.real or args.pool):
        raise InputError(None, "no ground truth source", "give --pool, --phantoms and/or --real")
    if args.checkpoints:
        _generate(args)
    rule = (FilterConfig(threshold=args.threshold) if args.threshold is not None
            else FilterConfig(top_fraction=args.top_fraction))
    rows = score_cases(args)
    print(report(rows, rule, args.good_dice))
    if args.per_pool or len(args.variant) > 1:
        order = list(dict.fromkeys(pool_names(args.pool or ()).values()))
        print(pool_table(rows, args.variant, by_pool=args.per_pool, order=order))
    if args.csv:
        _write_csv(args.csv, rows, args.variant, args.per_pool)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-pseudo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pseudo_dir", help="pseudo-label folder (generation output; with "
                        "--checkpoints it is generated first)")
    parser.add_argument("--pool", action="append", help="spread pool folder "
                        "(slicevos.pseudo.spread); repeatable")
    parser.add_argument("--pool-config", action="append", help="write the --pool of the same "
                        "position from this YAML first (repeatable), e.g. "
                        "configs/rounds/spread_pool.yaml")
    parser.add_argument("--phantoms", help="slicevos-make-phantoms folder the cases come from")
    parser.add_argument("--real", help="folder of <case>/ct.nii.gz + label_flare.nii.gz")
    parser.add_argument("--checkpoints", nargs="+", help="generate the folder first with these")
    parser.add_argument("--networks", nargs="+", default=["pair"], choices=("pair", "a", "b"),
                        help="members per checkpoint: the pair, or its networks a (TransUNet) "
                        "and b (DeepLabV3+) alone (default pair)")
    parser.add_argument("--tta", nargs="*", default=[], choices=TTA_CHOICES,
                        help="with --checkpoints: extra members <member>+<tta>, flips or slice "
                        "position transforms (pos_shift_up / pos_shift_down / pos_none)")
    parser.add_argument("--engines", nargs="+", choices=("stcn", "flow"), default=[],
                        help="with --checkpoints: also the full pipeline (reference keys + this "
                        "propagation engine) per checkpoint and engine, member ckpt<i>.<engine>")
    parser.add_argument("--propagation", help="STCN checkpoint for --engines stcn")
    parser.add_argument("--min-slices", type=int, default=20, help="with --real (default 20)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--member-set", action="append", metavar="NAME=M1,M2,...",
                        help="score this subset of members (repeatable; default all members)")
    parser.add_argument("--variant", nargs="+", default=[DEFAULT_VARIANT], choices=VARIANTS,
                        help=f"consensus variant(s) (default {DEFAULT_VARIANT}); the report is "
                        "the first one's, several add a Spearman table of every variant")
    parser.add_argument("--per-pool", action="store_true",
                        help="score each --pool alone: Spearman per pool, variant and member "
                        "set, and each variant's worst pool (the pools' case ids must differ)")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--top-fraction", type=float, default=0.5,
                      help="acceptance rule: the best fraction of volumes (default 0.5)")
    rule.add_argument("--threshold", type=float, help="acceptance rule: score >= T instead")
    parser.add_argument("--good-dice", type=float,
                        help="X of 'true DSC >= X' for precision/recall (default: the median "
                        "true DSC of the first member set)")
    parser.add_argument("--csv", help="write the per-case table (every member set) here")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
