"""slicevos-make-supervoxels: self-supervised object tracks for the propagation module. For
every CT given (NIfTI files or DICOM series folders) it writes, in the FLARE layout, the CT
(imagesTr/<case>_0000.nii.gz: a link to a NIfTI input, the volume itself for DICOM) and its 3D
supervoxels (labelsTr/<case>.nii.gz, ids 1..N), ready for
``slicevos-prepare-data OUT CACHE --schema objects``. Reruns skip finished cases."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slicevos.cli.common import run_cli
from slicevos.config import load_config
from slicevos.data.dataset_folder import IMAGES_DIR, LABELS_DIR
from slicevos.data.supervoxels import SupervoxelConfig, supervoxel_objects
from slicevos.errors import InputError
from slicevos.io.loader import load_volume
from slicevos.io.nifti import is_nifti, save_labels, save_volume, strip_nifti_suffix

_CLI_FIELDS = ("segment_mm", "compactness", "working_mm", "min_volume_ml", "max_objects")


def case_id_of(path: Path, suffix: str) -> str:
    """``<name>`` of ``<name>[_0000].nii[.gz]`` or of a DICOM folder, plus ``suffix``; a file
    called ``ct.nii.gz`` is named after its folder (``../shared/data/real`` layout)."""
    name = strip_nifti_suffix(path.name) if is_nifti(path) else path.name
    if name.endswith("_0000"):
        name = name[:-5]
    if name in ("ct", "image") and is_nifti(path):
        name = path.resolve().parent.name
    return name + suffix


def _config(args: argparse.Namespace) -> SupervoxelConfig:
    config = load_config(args.config, SupervoxelConfig) if args.config else SupervoxelConfig()
    changes = {f: getattr(args, f) for f in _CLI_FIELDS if getattr(args, f) is not None}
    return dataclasses.replace(config, **changes)


def _write_image(source: Path, volume, dest: Path) -> None:
    if is_nifti(source):
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(source.resolve(), tmp)
        os.replace(tmp, dest)
    else:
        save_volume(np.round(volume.hu).astype(np.int16), volume, dest)


def _body(args: argparse.Namespace) -> int:
    config = _config(args)
    out = Path(args.out_dir)
    cases = {}
    for raw in args.inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(path, "no such file or folder", "give CT NIfTI files or DICOM folders")
        case_id = case_id_of(path, args.suffix)
        if case_id in cases:
            raise InputError(path, f"case id {case_id!r} also comes from {cases[case_id]}",
                             "give each CT once, or rename one of them")
        cases[case_id] = path
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / LABELS_DIR).mkdir(parents=True, exist_ok=True)
    written = 0
    for case_id, path in tqdm(cases.items(), desc="supervoxels", unit="volume",
                              disable=not args.progress):
        label_path = out / LABELS_DIR / f"{case_id}.nii.gz"
        image_path = out / IMAGES_DIR / f"{case_id}_0000.nii.gz"
        if label_path.exists() and image_path.exists() and not args.overwrite:
            continue
        volume = load_volume(path)
        labels = supervoxel_objects(volume.hu, tuple(volume.spacing), config)
        _write_image(path, volume, image_path)
        save_labels(labels, volume, label_path)
        written += 1
        tqdm.write(f"{case_id}: {int(labels.max())} supervoxels")
    print(f"{out}: wrote {written} cases, kept {len(cases) - written} already there")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-make-supervoxels", description=__doc__)
    parser.add_argument("inputs", nargs="+", help="CT NIfTI files or DICOM series folders")
    parser.add_argument("--out-dir", required=True, help="output dataset folder (FLARE layout)")
    parser.add_argument("--suffix", default="_sv",
                        help="appended to each case id (default _sv), so these cases can sit "
                             "beside the same scans' real label tracks in one dataset")
    parser.add_argument("--config", help="SupervoxelConfig YAML")
    parser.add_argument("--segment-mm", dest="segment_mm", type=float,
                        help="target supervoxel edge in mm (default 40)")
    parser.add_argument("--compactness", type=float, help="SLIC compactness (default 0.1)")
    parser.add_argument("--working-mm", dest="working_mm", type=float,
                        help="in-plane grid SLIC runs on, in mm (default 1.4)")
    parser.add_argument("--min-volume-ml", dest="min_volume_ml", type=float,
                        help="drop supervoxels smaller than this (default 1 ml)")
    parser.add_argument("--max-objects", dest="max_objects", type=int,
                        help="at most this many per volume (default and limit 255)")
    parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
