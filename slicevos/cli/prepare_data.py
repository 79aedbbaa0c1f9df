"""slicevos-prepare-data: build the slice cache (windowed uint8 slices + labels as memory-mappable
.npy) of a dataset folder in the FLARE layout. Reruns skip cases that are up to date.

Test hook: SLICEVOS_TEST_EXIT_AFTER=N makes the process exit halfway through its (N+1)-th case,
to test kill safety (see slicevos.data.cache_build)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from slicevos.cli.common import run_cli
from slicevos.config import load_config
from slicevos.data.cache_build import PrepareConfig, PrepareSummary, prepare_cache, windows_to_json
from slicevos.errors import InputError
from slicevos.preprocessing.windowing import DEFAULT_WINDOWS, PRESETS

_WINDOW_HELP = (f"preset names {sorted(PRESETS)} or custom windows as L<level>/W<width> in HU "
                "(e.g. L60/W200)")


def resolve_config(args: argparse.Namespace) -> PrepareConfig:
    """Config file (if any) with the command-line options on top; checked."""
    config = load_config(args.config, PrepareConfig) if args.config else PrepareConfig()
    given = {"schema": args.schema, "windows": args.windows and tuple(args.windows), "workers": args.workers,
             "skip_bad": args.skip_bad}
    config = dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None})
    where = "--windows" if args.windows else (args.config or "default windows")
    try:
        windows_to_json(config.windows)
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(where, f"invalid windows {list(config.windows)} ({err})",
                         f"use {_WINDOW_HELP}") from None
    if config.workers is not None and config.workers < 1:
        raise InputError("--workers" if args.workers is not None else args.config,
                         f"workers must be >= 1, got {config.workers}", "pass --workers 1 or more")
    return config


def format_summary(summary: PrepareSummary, cache_dir: str) -> str:
    lines = [f"cache {cache_dir}: {len(summary.built)} built, {len(summary.skipped)} up to date, "
             f"{len(summary.failed)} failed; {summary.total_slices} slices in "
             f"{len(summary.built) + len(summary.skipped)} cases; wall {summary.seconds:.1f} s"]
    if summary.built:
        n = len(summary.built)
        mean = {k: sum(m["timing_s"][k] for m in summary.built) / n
                for k in ("load", "window", "write", "total")}
        lines.append("time per built case (mean): " + ", ".join(f"{k} {v:.2f} s"
                                                               for k, v in mean.items()))
    lines += [f"failed {case}: {message}" for case, message in summary.failed.items()]
    return "\n".join(lines)


def _body(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    with logging_redirect_tqdm():
        summary = prepare_cache(args.dataset_dir, args.cache_dir, config, overwrite=args.overwrite)
    print(format_summary(summary, args.cache_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-prepare-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", help="imagesTr/, labelsTr/, unlabeled/, annotations.yaml")
    parser.add_argument("cache_dir", help="output folder (created; reruns update it)")
    parser.add_argument("--config", help="YAML with schema/windows/workers/skip_bad "
                        "(example: configs/data/prepare.yaml); options given here win")
    parser.add_argument("--schema", help="label schema: flare22 (default), flare23, or objects "
                        "(any id 1..255, e.g. TotalSegmentator labels, for propagation training)")
    parser.add_argument("--windows", nargs="+", metavar="WINDOW",
                        help=f"{_WINDOW_HELP}; default {' '.join(DEFAULT_WINDOWS)}")
    parser.add_argument("--workers", type=int,
                        help=f"parallel processes (default min(2, CPU count) = "
                        f"{min(2, os.cpu_count() or 1)})")
    parser.add_argument("--skip-bad", action="store_true", default=None,
                        help="log a bad case, record it in index.json under 'failed' and go on "
                        "(default: stop at the first bad case)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild every case, even those that are up to date")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
