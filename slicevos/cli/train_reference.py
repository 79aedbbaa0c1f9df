"""slicevos-train-reference: train the reference pair (TransUNet + DeepLabV3+) with Cross Pseudo
Supervision, or supervised only, on a slice cache (see slicevos-prepare-data).

Multi-GPU: ``torchrun --nproc_per_node=N tools/train_reference.py --config ...`` (the same
command without torchrun runs on one device, CPU included)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from slicevos.cli.common import run_cli
from slicevos.cli.training_args import add_training_arguments, run_training


def _body(args: argparse.Namespace) -> int:
    from slicevos.training.reference import ReferenceConfig, ReferenceTrainer

    mode = [f"cps.mode={args.mode}"] if args.mode else []
    return run_training(args, ReferenceConfig, ReferenceTrainer, mode)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-train-reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, "configs/reference/fast_cpu.yaml")
    parser.add_argument("--mode", choices=("cps", "supervised"), help="overrides cps.mode")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
