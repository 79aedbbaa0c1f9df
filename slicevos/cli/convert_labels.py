"""slicevos-convert-labels: remap label files from another schema (e.g. TotalSegmentator v2)
onto FLARE ids with a mapping YAML, keeping each file's own geometry."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from slicevos.cli.common import run_cli
from slicevos.errors import InputError
from slicevos.io.labels import LabelMapping
from slicevos.io.nifti import NIFTI_SUFFIXES, load_labels, save_labels


def convert_file(src: Path, dst: Path, mapping: LabelMapping) -> None:
    if src.resolve() == dst.resolve():
        raise InputError(dst, "output would overwrite the input", "write to another file or folder")
    labels, geometry = load_labels(src)
    save_labels(mapping.apply(labels), geometry, dst, mapping.target)


def _body(args: argparse.Namespace) -> int:
    mapping = LabelMapping.from_yaml(args.mapping)
    src, dst = Path(args.input), Path(args.output)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.name.lower().endswith(NIFTI_SUFFIXES))
        if not files:
            raise InputError(src, "no .nii/.nii.gz label files in the folder", "check the path")
        for f in tqdm(files, desc="convert", unit="file"):
            target = dst / f.name
            if target.exists() and not args.overwrite:
                continue
            convert_file(f, target, mapping)
        print(f"converted {len(files)} files from {mapping.source} to {mapping.target.name} in {dst}")
    else:
        if dst.exists() and not args.overwrite:
            raise InputError(dst, "output exists", "pass --overwrite or choose another name")
        convert_file(src, dst, mapping)
        print(f"wrote {dst} ({mapping.source} -> {mapping.target.name})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-convert-labels", description=__doc__)
    parser.add_argument("input", help="label NIfTI file, or a folder of them")
    parser.add_argument("output", help="output file (or folder when input is a folder)")
    parser.add_argument("--mapping", required=True,
                        help="mapping YAML, e.g. configs/labels/totalseg_v2_to_flare.yaml")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
