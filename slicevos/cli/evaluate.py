"""slicevos-evaluate: DSC and NSD per organ with the FLARE rules (per-organ NSD tolerances,
aorta/IVC/esophagus scored on the ground-truth slices only, empty-mask rules).

PRED and GT are two folders of label NIfTI files matched by case name (GT may be a FLARE
dataset folder with labelsTr/), or two single label files. Predictions must be on the ground
truth's grid; spacing comes from the ground-truth header.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from slicevos.cli.common import run_cli
from slicevos.io.labels import SCHEMAS, get_schema
from slicevos.metrics.flare import evaluate_folders, write_results


def format_table(summary: dict[str, Any]) -> str:
    """Per-class DSC and NSD (mean, and std when there are several cases) plus the mean row."""
    with_std = summary["num_cases"] > 1
    width = max([len(name) for name in summary["classes"]] + [len("class")])

    def cell(mean: float, std: float | None) -> str:
        return f"{mean:.4f} ± {std:.4f}" if with_std else f"{mean:.4f}"

    cell_width = 15 if with_std else 6
    lines = [f"{'class':<{width}}  tol_mm  {'DSC':>{cell_width}}  {'NSD':>{cell_width}}"]
    for name, c in summary["classes"].items():
        lines.append(f"{name:<{width}}  {c['nsd_tolerance_mm']:>6g}  "
                     f"{cell(c['dsc_mean'], c['dsc_std']):>{cell_width}}  "
                     f"{cell(c['nsd_mean'], c['nsd_std']):>{cell_width}}")
    mean = summary["mean"]
    lines.append(f"{'mean':<{width}}  {'':>6}  {mean['dsc']:>{cell_width}.4f}  "
                 f"{mean['nsd']:>{cell_width}.4f}")
    return "\n".join(lines)


def _body(args: argparse.Namespace) -> int:
    schema = get_schema(args.schema)
    start = time.perf_counter()
    rows, summary = evaluate_folders(args.pred, args.gt, schema, classes=args.classes,
                                     workers=args.workers, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(format_table(summary))
    print(f"{summary['num_cases']} case(s), schema {schema.name}, {elapsed:.2f} s")
    if args.out:
        csv_path, json_path = write_results(args.out, rows, summary)
        print(f"wrote {csv_path} and {json_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slicevos-evaluate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pred", help="prediction folder (case.nii.gz) or one label file")
    parser.add_argument("gt", help="ground-truth folder (case.nii.gz or labelsTr/case.nii.gz) "
                        "or one label file")
    parser.add_argument("--schema", default="flare22", choices=sorted(SCHEMAS),
                        help="label schema: class ids, names and NSD tolerances (default flare22)")
    parser.add_argument("--out", help="folder for metrics_per_case.csv and summary.json "
                        "(nothing is written without it)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--classes", nargs="+", metavar="CLASS",
                        help="score only these classes (ids or names, e.g. liver 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
