"""slicevos-benchmark-io: time load + window + cache per volume against a raw nibabel read.

For every real volume in ``--data`` (default ``../shared/data/real``) and optionally a
generated phantom, it measures in one run:

- baseline: ``nibabel.load(path).get_fdata(dtype=float32)`` (reading the voxels, nothing else)
- load: ``slicevos.io.load_volume`` + ``load_labels`` (validation, scaling, canonical axes)
- window: ``window_volume`` (HU -> 3 uint8 channels)
- cache: writing the case into a slice cache (npy + meta, fsynced, atomic)

and prints a table with the ratio of slicevos' load to the baseline, so the figures compare on
a shared, noisy machine. Each figure is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from slicevos.cli.common import run_cli
from slicevos.data.cache_build import build_case, windows_to_json
from slicevos.data.dataset_folder import CaseSource
from slicevos.io.labels import get_schema
from slicevos.io.loader import load_volume
from slicevos.io.nifti import load_labels
from slicevos.preprocessing.windowing import DEFAULT_WINDOWS, window_volume

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def benchmark_case(case_id: str, image: Path, labels: Path | None, repeats: int) -> dict:
    schema = get_schema("flare23")
    windows = windows_to_json(DEFAULT_WINDOWS)
    baseline = _best_of(lambda: nib.load(str(image)).get_fdata(dtype=np.float32), repeats)

    def load() -> None:
        vol = load_volume(image)
        if labels is not None:
            load_labels(labels, reference=vol, schema=schema)

    load_s = _best_of(load, repeats)
    hu = load_volume(image).hu
    window_s = _best_of(lambda: window_volume(hu), repeats)
    source = CaseSource(case_id, image, labels, schema.ids if labels is not None else ())
    cache_s = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            meta = build_case(source, Path(tmp), schema, windows)
            cache_s = min(cache_s, meta["timing_s"]["write"])
    return {"case": case_id, "shape": "x".join(map(str, hu.shape)), "baseline": baseline,
            "load": load_s, "window": window_s, "cache": cache_s,
            "ratio": load_s / baseline if baseline > 0 else float("nan")}


def _phantom_case(tmp: Path, size: int, slices: int) -> tuple[str, Path, Path]:
    from slicevos.phantom import PhantomConfig, write_phantom_dataset

    config = PhantomConfig(shape=(slices, size, size))
    write_phantom_dataset(tmp, n_labeled=1, n_unlabeled=0, config=config, seed=0, progress=False)
    image = next((tmp / "imagesTr").glob("*_0000.nii.gz"))
    label = next((tmp / "labelsTr").glob("*.nii.gz"))
    return f"phantom_{size}x{size}x{slices}", image, label


def _body(args: argparse.Namespace) -> int:
    cases: list[tuple[str, Path, Path | None]] = []
    data = Path(args.data)
    if data.is_dir():
        for folder in sorted(p for p in data.iterdir() if (p / "ct.nii.gz").is_file()):
            label = folder / "label_flare.nii.gz"
            cases.append((folder.name, folder / "ct.nii.gz", label if label.is_file() else None))
    else:
        print(f"note: {data} is absent; benchmarking phantoms only")
    with tempfile.TemporaryDirectory() as tmp:
        if args.phantom_size:
            cases.append(_phantom_case(Path(tmp), args.phantom_size, args.phantom_slices))
        rows = [benchmark_case(*case, repeats=args.repeats) for case in cases]
    header = f"{'case':<28}{'D x H x W':>14}{'nibabel s':>11}{'load s':>9}{'ratio':>7}" \
             f"{'window s':>10}{'cache s':>9}{'total s':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        total = r["load"] + r["window"] + r["cache"]
        print(f"{r['case']:<28}{r['shape']:>14}{r['baseline']:>11.3f}{r['load']:>9.3f}"
              f"{r['ratio']:>7.2f}{r['window']:>10.3f}{r['cache']:>9.3f}{total:>9.3f}")
    print(f"(best of {args.repeats}; ratio = slicevos load (image + labels, validated, canonical) / "
          "raw nibabel image read)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-io", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder of real cases")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phantom-size", type=int, default=512, help="0 to skip the phantom")
    parser.add_argument("--phantom-slices", type=int, default=200)
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
