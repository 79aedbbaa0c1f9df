"""slicevos-train-reference: train the reference pair (TransUNet + DeepLabV3+) with Cross Pseudo
Supervision, or supervised only, on a slice cache (see slicevos-prepare-data).

Multi-GPU: ``torchrun --nproc_per_node=N tools/train_reference.py --config ...`` (the same
command without torchrun runs on one device, CPU included)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from slicevos.cli.common import run_cli
from slicevos.config import load_config


def _body(args: argparse.Namespace) -> int:
    from slicevos.training.distributed import shutdown_distributed
    from slicevos.training.reference import ReferenceConfig, ReferenceTrainer

    assignments = list(args.set)
    if args.cache:
        assignments.append(f"data.cache_dir={args.cache}")
    if args.out:
        assignments.append(f"train.out_dir={args.out}")
    if args.iterations:
        assignments.append(f"train.iterations={args.iterations}")
    if args.mode:
        assignments.append(f"cps.mode={args.mode}")
    if args.device:
        assignments.append(f"train.device={args.device}")
    config = load_config(args.config, ReferenceConfig, assignments=assignments)
    try:
        metrics = ReferenceTrainer(config, resume=args.resume,
                                   allow_config_change=args.allow_config_change).fit()
    finally:
        shutdown_distributed()
    if metrics:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-train-reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML, e.g. configs/reference/fast_cpu.yaml")
    parser.add_argument("--cache", help="slice cache folder (overrides data.cache_dir)")
    parser.add_argument("--out", help="run folder (overrides train.out_dir)")
    parser.add_argument("--iterations", type=int, help="overrides train.iterations")
    parser.add_argument("--mode", choices=("cps", "supervised"), help="overrides cps.mode")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides train.device")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set data.batch_labeled=4")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even if the config differs from the checkpoint's")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
