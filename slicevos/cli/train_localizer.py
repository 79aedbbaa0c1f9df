"""slicevos-train-localizer: train the abdomen localizer (a small slice classifier: abdomen or
not, labels derived from the organ masks) on a slice cache (see slicevos-prepare-data).

The checkpoint (OUT/best.pt or OUT/last.pt) carries its config and CT windows; the inference
pipeline loads it with ``slicevos.inference.localizer.Localizer.from_checkpoint``.
Multi-GPU: ``torchrun --nproc_per_node=N tools/train_localizer.py --config ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from slicevos.cli.common import run_cli
from slicevos.cli.training_args import add_training_arguments, run_training


def _body(args: argparse.Namespace) -> int:
    from slicevos.training.localizer import LocalizerConfig, LocalizerTrainer

    return run_training(args, LocalizerConfig, LocalizerTrainer)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-train-localizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, "configs/localizer/default.yaml")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
