"""slicevos-benchmark-gpu: a one-shot check of a GPU, in 8 minutes or less on one GPU.

Stages (``--stages``, default all, in this order):

- reference: the reference pair trained with CPS, configs/reference/paper.yaml (bf16 AMP),
  200 iterations: iterations per second after the warm-up and peak GPU memory;
- propagation: the STCN trained with configs/propagation/paper.yaml, 200 iterations: the same;
- inference: the automatic pipeline (STCN engine, bf16) on a 512x512x300 phantom with the two
  checkpoints just trained: seconds and peak GPU MB against FLARE's 15 s and 4 GB;
- ddp: the reference training under ``torchrun --nproc_per_node=1`` (DDP over NCCL; gloo on
  the CPU) for a few iterations.

The training data are phantoms made on the fly (2 labeled + 1 unlabeled 512x512 cases and
their slice cache). Each stage runs in a fresh process with a time limit (``--max-seconds``);
a failed stage records its error in its row and the others go on. ``--tiny`` runs the same
stages with the tiny configs on 64x64 phantoms (a CPU does it in about a minute). Prints one
table and writes the rows as JSON (``--out``); exits 1 when a stage failed or the inference
is outside FLARE's tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slicevos.cli.common import run_cli
from slicevos.errors import InputError
from slicevos.io.atomic import atomic_write_bytes

STAGES = ("reference", "propagation", "inference", "ddp")


def parse_stages(values: Sequence[str]) -> list[str]:
    """``--stages`` values (space or comma separated) in the run order; InputError otherwise."""
    names = [n for value in values for n in value.replace(",", " ").split()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise InputError("--stages", f"unknown stage(s) {unknown}" if unknown else "no stage",
                         f"name any of {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]


def _check_args(args: argparse.Namespace) -> list[str]:
    stages = parse_stages(args.stages)
    for name in ("iterations", "ddp_iterations", "depth", "threads", "max_seconds"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise InputError(f"--{name.replace('_', '-')}", f"must be positive, got {value}",
                             "pass a positive number")
    if args.warmup is not None and args.warmup < 0:
        raise InputError("--warmup", f"must be >= 0, got {args.warmup}", "pass 0 or more")
    for kind in ("reference", "propagation"):
        path = getattr(args, kind)
        if path and not Path(path).is_file():
            raise InputError(path, "checkpoint not found", f"check the --{kind} path")
        needed = "inference" in stages and (kind == "reference" or args.engine != "flow")
        if needed and not path and kind not in stages:
            raise InputError("--stages", f"the inference stage needs a {kind} checkpoint",
                             f"add the {kind} stage, or pass --{kind} CHECKPOINT")
    return stages


def _fmt(value: Any, spec: str) -> str:
    ok = isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))
    return format(value, spec) if ok else "-"


def tolerance_text(row: dict[str, Any]) -> str:
    if row["stage"] != "inference" or not row.get("status", "").startswith("ok"):
        return "-"
    within = row.get("within_tolerance")
    if within is None:
        return row.get("tolerance_note") or "n/a"
    return f"<=15 s, <=4 GB: {'pass' if within else 'FAIL'}"


def format_table(env: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"device: {env.get('device_name', '?')} ({env.get('device', '?')}), torch "
             f"{env.get('torch', '?')}, CUDA {env.get('cuda') or '-'}, cuDNN "
             f"{env.get('cudnn') or '-'}, slicevos {env.get('slicevos', '?')}",
             f"{'stage':<12} {'iters':>6} {'it/s':>8} {'seconds':>8} {'peak MB':>9} "
             f"{'memory':<26} {'tolerance':<22} status"]
    for r in rows:
        iters = r.get("iterations")
        lines.append(f"{r['stage']:<12} {_fmt(iters, 'd'):>6} {_fmt(r.get('it_per_s'), '.2f'):>8} "
                     f"{_fmt(r.get('seconds'), '.1f'):>8} {_fmt(r.get('peak_mb'), '.0f'):>9} "
                     f"{r.get('memory', '-'):<26} {tolerance_text(r):<22} {r['status']}")
    return "\n".join(lines)


def _stage_params(stage: str, args: argparse.Namespace, plan: Any, env: dict[str, Any],
                  work: Path, cache: Path, volume: Path, rows: dict[str, dict[str, Any]]
                  ) -> dict[str, Any]:
    """What the worker of ``stage`` is given; the inference uses this run's checkpoints unless
    ``--reference`` / ``--propagation`` name others."""
    base = {"device": env["device"], "threads": args.threads, "debug": args.debug,
            "deadline": time.time() + args.max_seconds - min(20.0, 0.15 * args.max_seconds)}
    if stage == "inference":
        found = {kind: getattr(args, kind) or rows.get(kind, {}).get("checkpoint")
                 for kind in ("reference", "propagation")}
        return {**base, "engine": args.engine, "volume": str(volume), "tiny": args.tiny,
                "out": str(work / "inference" / "labels.nii.gz"), **found}
    kind = "reference" if stage == "ddp" else stage
    return {**base, "kind": kind, "cache": str(cache), "out_dir": str(work / stage),
            "config": str(plan.reference_config if kind == "reference"
                          else plan.propagation_config),
            "iterations": plan.ddp_iterations if stage == "ddp" else plan.iterations,
            "warmup": min(plan.warmup, (plan.ddp_iterations if stage == "ddp"
                                        else plan.iterations) - 1),
            "ddp": stage == "ddp", "progress": not args.no_progress}


def _missing_checkpoint(params: dict[str, Any]) -> str | None:
    for kind in ("reference", "propagation"):
        if kind == "propagation" and params["engine"] == "flow":
            continue
        if not params.get(kind) or not Path(params[kind]).is_file():
            return (f"skipped: no {kind} checkpoint (run the {kind} stage or pass "
                    f"--{kind} CHECKPOINT)")
    return None


def run_checks(args: argparse.Namespace, stages: list[str], work: Path) -> tuple[
        dict[str, Any], list[dict[str, Any]]]:
    """The environment and one row per stage."""
    from slicevos.benchmarks.gpu import make_data, make_plan, run_stage

    env = run_stage("env", {"device": args.device, "threads": args.threads}, work, 60)
    if env["status"] != "ok":
        raise RuntimeError(f"could not start torch in a worker process: {env['status']}")
    if args.device == "cuda" and not env["cuda_available"]:
        raise InputError("--device", "cuda requested but torch sees no CUDA device",
                         "run on a GPU machine, or pass --device cpu (with --tiny)")
    plan = make_plan(args.tiny, args.iterations, args.depth, args.warmup, args.ddp_iterations)
    if env["device"] == "cpu" and not args.tiny:
        print("note: the paper configs take about a minute per iteration on a CPU; the "
              "stages will stop at --max-seconds (use --tiny for a CPU check)", flush=True)
    print(f"device {env['device']} ({env['device_name']}); making phantoms "
          f"{plan.train_shape[1]}x{plan.train_shape[2]} for training and "
          f"{plan.volume_shape[1]}x{plan.volume_shape[2]}x{plan.volume_shape[0]} to segment",
          flush=True)
    start = time.perf_counter()
    cache, volume = make_data(work / "data", plan)
    print(f"data ready in {time.perf_counter() - start:.1f} s", flush=True)
    done: dict[str, dict[str, Any]] = {}
    for stage in stages:
        params = _stage_params(stage, args, plan, env, work, cache, volume, done)
        skip = _missing_checkpoint(params) if stage == "inference" else None
        row = ({"stage": stage, "status": skip} if skip else
               run_stage(stage, params, work, args.max_seconds, torchrun=stage == "ddp"))
        done[stage] = row
        print(format_table(env, [row]).splitlines()[-1], flush=True)
    return env, list(done.values())


def _body(args: argparse.Namespace) -> int:
    stages = _check_args(args)
    args.max_seconds = args.max_seconds or (600.0 if args.tiny else 105.0)
    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        env, rows = run_checks(args, stages, Path(args.work_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="slicevos_gpu_") as tmp:
            env, rows = run_checks(args, stages, Path(tmp))
    print("\n" + format_table(env, rows))
    failed = [r["stage"] for r in rows if not r["status"].startswith("ok")
              or r.get("within_tolerance") is False]
    print(("check failed: " + ", ".join(failed)) if failed else "all stages ok")
    payload = {"environment": env, "tiny": args.tiny, "stages": rows, "ok": not failed}
    atomic_write_bytes(args.out, json.dumps(payload, indent=2).encode())
    print(f"wrote {args.out}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny configs and 64x64 phantoms (a CPU check of the tool itself)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), metavar="STAGE",
                        help=f"a subset of {', '.join(STAGES)} (default all)")
    parser.add_argument("--iterations", type=int,
                        help="training iterations per stage (default 200, --tiny 4)")
    parser.add_argument("--warmup", type=int,
                        help="first iterations left out of it/s (default a tenth, at least 1)")
    parser.add_argument("--ddp-iterations", type=int, help="torchrun stage (default 20, --tiny 2)")
    parser.add_argument("--depth", type=int,
                        help="slices of the volume to segment (default 300, --tiny 24)")
    parser.add_argument("--engine", default="stcn", choices=("stcn", "flow"),
                        help="propagation engine of the inference stage (default stcn)")
    parser.add_argument("--reference", help="reference checkpoint for the inference stage "
                        "(default: the one the reference stage trained)")
    parser.add_argument("--propagation", help="propagation checkpoint for the inference stage "
                        "(default: the one the propagation stage trained)")
    parser.add_argument("--max-seconds", type=float,
                        help="time limit of each stage, process start included (default 105; "
                        "--tiny 600); a training stage stops at it and reports what it ran")
    parser.add_argument("--threads", type=int, help="torch CPU threads in each stage")
    parser.add_argument("--no-progress", action="store_true", help="no training progress bars")
    parser.add_argument("--work-dir", help="keep the phantoms, runs and checkpoints here "
                        "(default: a temporary folder, removed)")
    parser.add_argument("--out", default="benchmark_gpu.json", help="JSON of the rows")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
