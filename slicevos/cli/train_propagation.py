"""slicevos-train-propagation: train the STCN propagation network on 3-slice clips of a slice
cache (see slicevos-prepare-data); any label id in the cache is an object.

Multi-GPU: ``torchrun --nproc_per_node=N tools/train_propagation.py --config ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from slicevos.cli.common import run_cli
from slicevos.cli.training_args import add_training_arguments, run_training


def _body(args: argparse.Namespace) -> int:
    from slicevos.training.propagation import PropagationConfig, PropagationTrainer

    return run_training(args, PropagationConfig, PropagationTrainer)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-train-propagation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, "configs/propagation/tiny.yaml")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
