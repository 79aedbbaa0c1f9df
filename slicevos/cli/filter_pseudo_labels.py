"""slicevos-filter-pseudo-labels: score every pseudo-labeled case by the consensus of its
members, keep those that clear a threshold (or the best fraction), and write them as a dataset
folder for the next round, with scores.csv and scores_histogram.png."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from slicevos.cli.common import run_cli
from slicevos.pseudo.consensus import DEFAULT_VARIANT, VARIANTS
from slicevos.pseudo.dataset_writer import check_output_dir, write_accepted_dataset
from slicevos.pseudo.filtering import Decision, FilterConfig, select_cases, volume_cutoff
from slicevos.pseudo.folder import score_pseudo_folder


def summary(decisions: Sequence[Decision], cutoff: float, config: FilterConfig) -> str:
    """A few lines: counts, score range, cutoff."""
    scores = np.array([d.score for d in decisions])
    whole = sum(d.accepted and not d.partial for d in decisions)
    partial = sum(d.accepted and d.partial for d in decisions)
    rule = (f"threshold {config.threshold:g}" if config.threshold is not None
            else f"top fraction {config.top_fraction:g}")
    lines = [
        f"cases scored    {len(decisions)} ({config.variant})",
        f"score           min {scores.min():.4f}  median {np.median(scores):.4f}  "
        f"max {scores.max():.4f}",
        f"cutoff          {cutoff:.4f} ({rule})",
        f"accepted        {whole} whole volumes"
        + (f", {partial} partial (per-organ)" if config.per_organ else ""),
        f"rejected        {len(decisions) - whole - partial} (left unlabeled)",
    ]
    return "\n".join(lines)


def _body(args: argparse.Namespace) -> int:
    config = FilterConfig(threshold=args.threshold, top_fraction=args.top_fraction,
                          variant=args.variant, per_organ=args.per_organ,
                          organ_threshold=args.organ_threshold, min_organs=args.min_organs)
    inputs = [args.pseudo_dir] + ([args.base_dataset] if args.base_dataset else [])
    check_output_dir(args.out_dataset, inputs, args.overwrite)  # fail before the scoring
    scores = score_pseudo_folder(args.pseudo_dir, config.variant)
    decisions = select_cases(scores, config)
    cutoff = volume_cutoff(scores, config)
    out = write_accepted_dataset(decisions, args.pseudo_dir, args.out_dataset, args.base_dataset,
                                 overwrite=args.overwrite, cutoff=cutoff)
    print(summary(decisions, cutoff, config))
    print(f"dataset         {out} (scores.csv, scores_histogram.png)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-filter-pseudo-labels", description=__doc__)
    parser.add_argument("pseudo_dir", metavar="PSEUDO_DIR",
                        help="pseudo-label folder (generation output)")
    parser.add_argument("out_dataset", metavar="OUT_DATASET", help="dataset folder to write")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, help="accept volumes scoring >= T (0..1)")
    rule.add_argument("--top-fraction", type=float, help="accept the best fraction F of volumes")
    parser.add_argument("--per-organ", action="store_true",
                        help="keep the confident organs of rejected volumes as partial labels")
    parser.add_argument("--organ-threshold", type=float,
                        help="keep only the organs scoring >= T in every accepted case, the "
                        "others unannotated (with --per-organ also in rejected cases, where "
                        "the default is the volume cutoff)")
    parser.add_argument("--min-organs", type=int, default=1,
                        help="organs a case must keep to be accepted (default 1)")
    parser.add_argument("--variant", choices=VARIANTS, default=DEFAULT_VARIANT,
                        help=f"consensus score (default {DEFAULT_VARIANT}; dice_mean = DESIGN.md's "
                        "per-slice formula; paper_iou_majority = the paper code's IoU against "
                        "the majority vote)")
    parser.add_argument("--base-dataset", help="dataset folder whose labeled cases are included "
                        "and whose other unlabeled cases go to unlabeled/")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DATASET")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
