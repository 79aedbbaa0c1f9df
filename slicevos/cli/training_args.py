"""The command-line surface shared by the training tools (reference, propagation): config file,
overrides, resume, and the torchrun-safe run of a trainer."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slicevos.config import load_config


def add_training_arguments(parser: argparse.ArgumentParser, example_config: str) -> None:
    parser.add_argument("--config", required=True, help=f"YAML, e.g. {example_config}")
    parser.add_argument("--cache", help="slice cache folder (overrides data.cache_dir)")
    parser.add_argument("--out", help="run folder (overrides train.out_dir)")
    parser.add_argument("--iterations", type=int, help="overrides train.iterations")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides train.device")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set data.batch_size=4")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even if the config differs from the checkpoint's")


def resolve_relative_augment(config: Any, config_path: Path) -> Any:
    """A relative ``data.augment`` path in a config file is relative to that file's folder."""
    augment = getattr(config.data, "augment", None)
    if isinstance(augment, str) and not Path(augment).is_absolute():
        resolved = str((config_path.parent / augment).resolve())
        config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                      augment=resolved))
    return config


def load_training_config(path: str | Path, config_cls: type, assignments: Sequence[str] = ()
                         ) -> Any:
    """A training config file with ``key=value`` overrides; a relative ``data.augment`` is
    resolved against the file's folder."""
    return resolve_relative_augment(load_config(path, config_cls, assignments=list(assignments)),
                                    Path(path))


def run_training(args: argparse.Namespace, config_cls: type, trainer_cls: Callable[..., Any],
                 extra_assignments: list[str] | None = None) -> int:
    """Load the config with the command-line overrides, train, print the last validation."""
    from slicevos.training.distributed import shutdown_distributed

    named = {"data.cache_dir": args.cache, "train.out_dir": args.out,
             "train.iterations": args.iterations, "train.device": args.device}
    assignments = [*args.set, *(extra_assignments or []),
                   *(f"{key}={value}" for key, value in named.items() if value)]
    config = load_training_config(args.config, config_cls, assignments)
    try:
        metrics = trainer_cls(config, resume=args.resume,
                              allow_config_change=args.allow_config_change).fit()
    finally:
        shutdown_distributed()
    if metrics:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    return 0
