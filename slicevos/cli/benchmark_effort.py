"""slicevos-benchmark-effort: how many key slices, edited pixels and seconds a (simulated)
annotator needs on the labelling page to reach a given DSC.

A simulated user labels each scan through the page's own state (``slicevos.labeler.state``,
flow engine) from its true labels: per organ (``organ`` mode: redraw one organ on one slice,
then propagate) or per whole slice (``slice`` mode), choosing the next slice by a rule
(``suggested``: the page's "check next" list; ``bisect``; ``error3d``: the CVPR 2025
challenge's largest-3D-error rule; ``oracle``: the slice with the most wrong pixels). Details:
``slicevos.benchmarks.effort``.

Tables per scan and mode: DSC (mean over organs) after 1..8 keys, NoS@0.90/0.95 (keys to first
reach that DSC: mean over the organs that did, and how many did), DSC_AUC (trapezoidal mean
DSC over 1..6 keys), ``worse`` (the keys after which their organ's DSC fell by more than
0.005, out of all keys given), pixels edited, propagation seconds per correction (mean and max), the
longest work ahead the page does after a propagation (``ahead s``: computing the flows a next
key may need, while the user looks and draws; the user is assumed to take that long unless
``--cold``); NoS@0.95 per organ; and the means over scans. Files in ``--out``: effort.json (every curve), effort.csv (one row
per scan, mode, rule, organ and step) and effort_<scan>_<mode>.png (needs matplotlib:
``pip install -e ".[plot]"``).

Example: ``slicevos-benchmark-effort --cases example_ct_sm30`` (real volumes in
../shared/data/real) or ``slicevos-benchmark-effort --scans ct.nii.gz --labels labels.nii.gz``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slicevos.cli.common import run_cli
from slicevos.errors import InputError

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
RULE_NAMES = ("suggested", "bisect", "error3d", "oracle")  # slicevos.benchmarks.effort_rules
MODE_NAMES = ("organ", "slice")


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _nos(row: dict[str, Any], t: str) -> str:
    done, total = row[f"reached@{t}"]
    return f"{_fmt(row[f'nos@{t}'], '.1f')} ({done}/{total})"


def print_table(title: str, rows: dict[str, dict[str, Any]]) -> None:
    """Rows = rules; columns as in the module doc."""
    from slicevos.benchmarks.effort_metrics import TABLE_KEYS
    print(f"\n{title}")
    print(f"{'rule':<11}" + "".join(f"{f'DSC@{k}':>7}" for k in TABLE_KEYS)
          + f"{'NoS@.90':>13}{'NoS@.95':>13}{'AUC1-6':>8}{'worse':>9}{'pixels':>10}"
          + f"{'s/corr':>8}{'max s':>7}{'ahead s':>8}")
    for rule, row in rows.items():
        worse, keys = row["worse"]
        print(f"{rule:<11}" + "".join(f"{_fmt(row[f'dsc@{k}']):>7}" for k in TABLE_KEYS)
              + f"{_nos(row, '0.90'):>13}{_nos(row, '0.95'):>13}{_fmt(row['auc']):>8}"
              + f"{f'{worse}/{keys}':>9}"
              + f"{_fmt(row['pixels'], '.0f'):>10}{_fmt(row['s_mean'], '.2f'):>8}"
              + f"{_fmt(row['s_max'], '.2f'):>7}{_fmt(row['ahead_max'], '.2f'):>8}")


def print_organ_nos(rows: dict[str, dict[str, Any]]) -> None:
    """NoS@0.95 per organ (rows) and rule (columns)."""
    organs = list(next(iter(rows.values()))["nos_by_organ"])
    print("NoS@0.95 per organ ('-': not within the run)")
    print(f"{'organ':<22}" + "".join(f"{rule:>11}" for rule in rows))
    for organ in organs:
        print(f"{organ:<22}" + "".join(f"{_fmt(row['nos_by_organ'][organ], 'd'):>11}"
                                       for row in rows.values()))


def mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over scans of one rule's rows (None values left out; counts summed)."""
    out: dict[str, Any] = {}
    for key in rows[0]:
        if key == "nos_by_organ":
            continue
        if isinstance(rows[0][key], tuple):  # (count, out of): reached@t, worse
            out[key] = tuple(sum(r[key][i] for r in rows) for i in (0, 1))
            continue
        kept = [r[key] for r in rows if r[key] is not None]
        out[key] = sum(kept) / len(kept) if kept else None
    return out


def _organ_ids(values: Sequence[str] | None, schema: Any) -> list[int] | None:
    if not values:
        return None
    ids = []
    for value in values:
        if value.isdigit() and int(value) in schema.ids:
            ids.append(int(value))
        elif value in schema.names:
            ids.append(schema.id_of(value))
        else:
            raise InputError(None, f"--organs: {value!r} is no organ of schema {schema.name}",
                             f"use ids or names: {', '.join(schema.names)}")
    return ids


def _cases(args: argparse.Namespace, schema: Any, organs: list[int] | None) -> list:
    from slicevos.benchmarks.effort import folder_cases, load_case
    if args.scans:
        if not args.labels or len(args.labels) != len(args.scans):
            raise InputError(None, f"{len(args.scans)} --scans but {len(args.labels or [])} "
                             "--labels", "give one label file per scan, in the same order")
        return [load_case(s, lab, schema, organs) for s, lab in
                zip(args.scans, args.labels, strict=True)]
    cases = list(folder_cases(Path(args.data), schema, args.cases, organs))
    if not cases:
        raise InputError(args.data, "no case folder with ct.nii.gz, label_flare.nii.gz and at "
                         "least 20 slices" + (f" among {args.cases}" if args.cases else ""),
                         "pass --data FOLDER, check --cases, or use --scans/--labels")
    return cases


def _body(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from slicevos.benchmarks.effort import run_benchmark
    from slicevos.benchmarks.effort_metrics import summarize, write_csv, write_json, write_plot
    from slicevos.io.labels import get_schema

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    schema = get_schema(args.schema)
    cases = _cases(args, schema, _organ_ids(args.organs, schema))
    runs = run_benchmark(cases, schema, args.modes, args.rules, args.start, args.max_keys,
                         args.stop_dsc, progress=lambda jobs: tqdm(jobs, desc="effort",
                                                                   unit="run"),
                         work_ahead=not args.cold)
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "debug"}
    write_json(runs, out / "effort.json", settings)
    write_csv(runs, out / "effort.csv")
    by_mode: dict[str, dict[str, list]] = {}
    for case in cases:
        for mode in args.modes:
            chosen = [r for r in runs if r.scan == case.name and r.mode == mode]
            rows = {r.rule: summarize(r) for r in chosen}
            for rule, row in rows.items():
                by_mode.setdefault(mode, {}).setdefault(rule, []).append(row)
            print_table(f"{case.name}: {mode} mode, start {args.start}, {len(chosen[0].organs)} "
                        f"organs, {args.max_keys} correction steps", rows)
            print_organ_nos(rows)
            write_plot(chosen, out / f"effort_{case.name}_{mode}.png", args.max_keys)
    for mode, rules in by_mode.items():
        print_table(f"all scans ({len(cases)}): {mode} mode, mean over scans",
                    {rule: mean_rows(rows) for rule, rows in rules.items()})
    print(f"\nwrote {out / 'effort.json'}, {out / 'effort.csv'} and plots; "
          f"{time.perf_counter() - started:.0f} s, {torch.get_num_threads()} torch threads")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-effort", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", nargs="+", help="scans (NIfTI files or DICOM folders)")
    parser.add_argument("--labels", nargs="+", help="their true label files, in order")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="without --scans: every subfolder with ct.nii.gz, "
                        "label_flare.nii.gz and >= 20 slices (default ../shared/data/real)")
    parser.add_argument("--cases", nargs="+", help="with --data: only these subfolders")
    parser.add_argument("--schema", default="flare22",
                        help="label schema: flare22 (default), flare23 or objects")
    parser.add_argument("--organs", nargs="+", help="only these organs (names or ids)")
    parser.add_argument("--modes", nargs="+", default=list(MODE_NAMES), choices=MODE_NAMES)
    parser.add_argument("--rules", nargs="+", default=list(RULE_NAMES), choices=RULE_NAMES)
    parser.add_argument("--start", default="middle", choices=("middle", "range"),
                        help="middle: one key per organ; range: also its first and last "
                        "slices as the first two corrections")
    parser.add_argument("--max-keys", type=int, default=8,
                        help="correction steps after the start (default 8)")
    parser.add_argument("--stop-dsc", type=float, default=0.99,
                        help="an organ at this DSC gets no more corrections")
    parser.add_argument("--cold", action="store_true",
                        help="correct right after each propagation, before the page's work "
                        "ahead (a user who draws in under the 'ahead s' column's time)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", default="benchmark_effort_out",
                        help="folder for effort.json, effort.csv and the plots")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
