"""slicevos-real-folds: the reference pair and the localizer trained on the shared real CT and
judged leave one patient out (``slicevos.benchmarks.real_folds``); ``--final`` then trains on
every real volume (the checkpoint to ship, if the folds earn it).

Prints, per held-out patient and organ, the FLARE DSC of the reference alone, the automatic
pipeline (reference keys + flow), oracle keys + flow, + nearest-key copy and + contour
interpolation; then
the localizer's z-range error. Writes OUT/results.json. A rerun resumes unfinished training.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slicevos.cli.common import run_cli
from slicevos.errors import InputError

ROWS = ("reference", "automatic", "oracle keys + flow", "oracle keys + copy",
        "oracle keys + contour")


def _fold_table(result: dict[str, Any]) -> list[str]:
    evaluation = result["evaluation"]
    organs = evaluation["organs"]
    lines = [f"\n## held out: {result['held_out']}  (train {result['reference_train_seconds']:.0f}"
             f" s; {len(evaluation['key_slices'])} key slices)",
             "| organ | " + " | ".join(ROWS) + " |", "|---" * (len(ROWS) + 1) + "|"]
    rows = evaluation["rows"]
    for organ in organs:
        cells = [f"{rows[r][organ]['dsc']:.3f}" if r in rows else "n/a" for r in ROWS]
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    means = [f"{sum(rows[r][o]['dsc'] for o in organs) / len(organs):.3f}" if r in rows
             else "n/a" for r in ROWS]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return lines


def _localizer_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["\n## localizer (held-out patient)",
             "| held out | slices | true organ range | found range | z error low / high | "
             "skipped | abdomen-organ slices lost | any-label slices lost | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        loc = result["localizer"]
        lines.append(f"| {loc['case']} | {loc['depth']} | {loc['true_range']} | {loc['range']} "
                     f"| {loc['z_error_low']} / {loc['z_error_high']} | "
                     f"{loc['skipped_share']:.0%} | {loc['organ_slices_lost']} of "
                     f"{loc['organ_slices']} | {loc['labeled_slices_lost']} of "
                     f"{loc['labeled_slices']} | {result['localizer_train_seconds']:.0f} |")
    return lines


def _body(args: argparse.Namespace) -> int:
    import torch

    from slicevos.benchmarks.real_folds import PATIENTS, FoldSettings, run_fold

    if args.threads:
        torch.set_num_threads(args.threads)
    real = Path(args.real)
    if not real.is_dir():
        raise InputError(real, "real data folder not found", "pass --real ../shared/data/real")
    unknown = sorted(set(args.folds) - set(PATIENTS))
    if unknown:
        raise InputError(None, f"unknown patient(s) {unknown}", f"use some of {list(PATIENTS)}")
    settings = FoldSettings(
        reference_config=None if args.no_reference else args.config,
        localizer_config=None if args.no_localizer else args.localizer_config,
        reference_iterations=args.iterations, localizer_iterations=args.localizer_iterations,
        assignments=tuple(args.set), progress=not args.no_progress)
    out = Path(args.out)
    results = [run_fold(real, held_out, out, settings) for held_out in args.folds]
    if args.final:
        results.append(run_fold(real, None, out, settings))
    lines = [line for r in results if "evaluation" in r for line in _fold_table(r)]
    with_localizer = [r for r in results if "localizer" in r]
    if with_localizer:
        lines += _localizer_table(with_localizer)
    print("\n".join(lines))
    from slicevos.io.atomic import atomic_write_bytes

    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from slicevos.benchmarks.real_folds import PATIENTS

    parser = argparse.ArgumentParser(prog="slicevos-real-folds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", default="../shared/data/real", help="the shared real volumes")
    parser.add_argument("--out", default="work/real_folds", help="runs, caches and results")
    parser.add_argument("--folds", nargs="*", default=list(PATIENTS),
                        help="patients to hold out, one fold each (none: only --final)")
    parser.add_argument("--final", action="store_true",
                        help="also train on every real volume (OUT/all/reference/last.pt)")
    parser.add_argument("--config", default="configs/reference/real_cpu.yaml")
    parser.add_argument("--localizer-config", default="configs/localizer/real_cpu.yaml")
    parser.add_argument("--iterations", type=int, help="override the reference iterations")
    parser.add_argument("--localizer-iterations", type=int)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="reference config overrides, e.g. data.spacing_mm=2.0")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--no-localizer", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
