"""slicevos-make-phantoms: write synthetic abdominal CT phantoms with FLARE labels in the FLARE
folder layout (imagesTr/, labelsTr/, unlabeled/, dataset.json). Reruns skip finished cases."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from slicevos.cli.common import run_cli
from slicevos.config import load_config
from slicevos.errors import InputError
from slicevos.phantom import PhantomConfig, write_phantom_dataset


def _config(args: argparse.Namespace) -> PhantomConfig:
    config = load_config(args.config, PhantomConfig) if args.config else PhantomConfig()
    changes: dict = {}
    d, h, w = config.shape
    if args.size is not None:
        if len(args.size) not in (1, 2):
            raise InputError("--size", f"got {len(args.size)} values {args.size}",
                             "give one value (square slices) or two (rows columns)")
        h, w = (args.size * 2)[:2]
    if args.slices is not None:
        d = args.slices
    changes["shape"] = (d, h, w)
    if args.spacing is not None:
        if len(args.spacing) not in (2, 3):
            raise InputError("--spacing", f"got {len(args.spacing)} values {args.spacing}",
                             "give DZ DXY or DZ DY DX in mm, e.g. --spacing 5 1.5")
        sp = args.spacing
        changes["spacing"] = (sp[0], sp[1], sp[1]) if len(sp) == 2 else tuple(sp)
    if args.noise is not None:
        changes["noise_hu"] = args.noise
    if args.tumor_probability is not None:
        changes["tumor_probability"] = args.tumor_probability
    return dataclasses.replace(config, **changes)


def _body(args: argparse.Namespace) -> int:
    config = _config(args)
    summary = write_phantom_dataset(
        args.out_dir, args.labeled, args.unlabeled, config, seed=args.seed,
        with_tumor=True if args.tumor else None, overwrite=args.overwrite,
    )
    print(f"{summary.root}: wrote {summary.written} phantoms, kept {summary.skipped} already "
          f"there ({args.labeled} labeled, {args.unlabeled} unlabeled, shape {config.shape})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-make-phantoms", description=__doc__)
    parser.add_argument("out_dir", help="output dataset folder")
    parser.add_argument("--labeled", type=int, default=4, help="labeled cases (default 4)")
    parser.add_argument("--unlabeled", type=int, default=0, help="unlabeled cases (default 0)")
    parser.add_argument("--size", type=int, nargs="+", metavar="N",
                        help="in-plane size: N (square) or ROWS COLS (default from the config)")
    parser.add_argument("--slices", type=int, help="number of axial slices")
    parser.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                        help="voxel size DZ DXY or DZ DY DX in mm (default: fit the field of view)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--tumor", action="store_true", help="add tumors (label 14, flare23)")
    parser.add_argument("--tumor-probability", type=float, help="chance a case has tumors")
    parser.add_argument("--noise", type=float, help="noise standard deviation in HU")
    parser.add_argument("--config", help="PhantomConfig YAML, e.g. configs/phantom/default.yaml")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate existing cases (also when the settings changed)")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
