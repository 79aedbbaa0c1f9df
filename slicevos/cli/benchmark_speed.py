"""slicevos-benchmark-speed: end-to-end seconds and peak memory of slicevos-infer on phantom
volumes (default 512x512x100 and x300) for the paper and fast configs, with the flow and the
STCN propagation engines (``--engines``), against nnU-Net's
3d_fullres sliding-window inference on the same volumes, measured in the same run.

Every measurement runs in a fresh process, so each peak RSS is its own. slicevos runs are the
automatic pipeline (load, windowing, reference key slices, propagation, component rules, write) with
random-weight networks built from configs/{reference,propagation}/<config>.yaml, unless
checkpoints are given. Random networks label noise, so the key slices carry more objects
than a trained model finds: the table shows the keys and objects each run propagated. The
baseline needs ``pip install -e ".[bench]"``; on a CPU it stops after ``--baseline-max-tiles``
tiles and extrapolates from the measured time per tile (both columns shown).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from slicevos.cli.common import run_cli
from slicevos.io.atomic import atomic_write_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TARGET_FAST_100_S = 60.0
TARGET_FLOW_100_S = 20.0
TARGET_SPEEDUP = 5.0


def make_phantom_file(folder: Path, depth: int, size: int, seed: int = 0) -> Path:
    """A phantom CT of (depth, size, size) as NIfTI (FLARE organs; the labels are not used)."""
    from slicevos.phantom import PhantomConfig, write_phantom_dataset

    out = folder / f"phantom_{depth}x{size}"
    write_phantom_dataset(out, n_labeled=0, n_unlabeled=1,
                          config=PhantomConfig(shape=(depth, size, size)), seed=seed,
                          progress=False)
    return next((out / "unlabeled").glob("*.nii.gz"))


def random_pipeline(config_name: str, device: str, reference: str | None,
                    propagation: str | None, engine: str = "stcn", backend: str = "torch",
                    work_dir: Path | None = None):
    """A VolumePipeline with the networks of ``config_name`` (random weights), or loaded from
    the given checkpoints; ``engine`` flow propagates with optical flow (no network);
    ``backend`` onnx runs the reference pair with onnxruntime (a random pair is exported to
    ``work_dir`` first, outside the timed run)."""
    import dataclasses

    import torch
    import yaml

    from slicevos.config import from_dict
    from slicevos.inference.config import InferenceConfig
    from slicevos.inference.engines.flow.engine import FlowPropagator
    from slicevos.inference.engines.stcn.engine import Propagator
    from slicevos.inference.pipeline import VolumePipeline
    from slicevos.inference.reference.segmenter import ReferenceSegmenter
    from slicevos.io.labels import get_schema
    from slicevos.models.propagation import PropagationModelConfig, PropagationNet
    from slicevos.models.reference.cps import CPSConfig, build_cps_pair
    from slicevos.preprocessing.windowing import resolve_windows

    inference_file = CONFIGS / "inference" / f"{config_name}.yaml"
    options = from_dict(InferenceConfig, yaml.safe_load(
        (inference_file if inference_file.exists() else CONFIGS / "inference" / "default.yaml")
        .read_text()))
    options = dataclasses.replace(options, propagator=engine, backend=backend)
    if reference and (propagation or engine == "flow"):
        return VolumePipeline.from_checkpoints(propagation if engine != "flow" else None,
                                               reference, None, options, device)
    schema, windows = get_schema("flare22"), resolve_windows()
    torch.manual_seed(0)  # the same random networks in every run and for every engine
    ref_cfg = yaml.safe_load((CONFIGS / "reference" / f"{config_name}.yaml").read_text())
    prop_cfg = yaml.safe_load((CONFIGS / "propagation" / f"{config_name}.yaml").read_text())
    pair = build_cps_pair(from_dict(CPSConfig, ref_cfg["model"]), schema.num_classes,
                          len(windows))
    net_config = from_dict(PropagationModelConfig, prop_cfg["model"])
    net = PropagationNet(dataclasses.replace(net_config, num_classes=schema.num_classes,
                                             in_channels=len(windows)))
    propagator = (FlowPropagator(options.flow) if engine == "flow" else
                  Propagator(net, device, options.memory_every, options.max_memory_frames,
                             features_on_cpu=options.features_on_cpu,
                             feature_cache_slices=options.feature_cache_slices))
    segmenter = ReferenceSegmenter(_reference_model(pair.eval(), backend, windows, work_dir),
                                   device, options.batch_size)
    return VolumePipeline(propagator, windows, schema, segmenter, windows, None, options)


def _reference_model(pair, backend: str, windows, work_dir: Path | None):
    """The pair itself, or (onnx) its graph exported to ``work_dir`` by
    :func:`export_random_reference`."""
    if backend == "torch":
        return pair
    from slicevos.inference.onnx.runtime import OnnxReferenceModel

    path = Path(work_dir) / "reference.onnx"
    if not path.is_file():
        from slicevos.inference.onnx.export import export_graph
        from slicevos.inference.onnx.graphs import reference_spec

        export_graph(reference_spec(pair, "flare22", windows, "random"), path)
    return OnnxReferenceModel(path)


def export_reference(config_name: str, work_dir: str, reference: str | None) -> dict[str, Any]:
    """Export the reference checkpoint (to the cache) or the random pair of ``config_name``
    (the one the timed runs build) in its own process, so the export's time and memory are
    not counted in a timed run."""
    if reference:
        from slicevos.inference.onnx.runtime import reference_onnx_path

        reference_onnx_path(reference)
    else:
        random_pipeline(config_name, "cpu", None, None, "flow", "onnx", Path(work_dir))
    return {}


def time_slicevos(image: str, config_name: str, device: str, reference: str | None,
                  propagation: str | None, threads: int, engine: str = "stcn",
                  backend: str = "torch") -> dict[str, Any]:
    """One automatic run in this (fresh) process: seconds per stage, total, peak memory."""
    import torch

    torch.set_num_threads(threads)
    from slicevos.cli.infer_cases import Case, OutputOptions, run_case

    work = Path(image).parent / f"onnx_{config_name}"
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = random_pipeline(config_name, device, reference, propagation, engine, backend,
                                   work)
        report = run_case(Case("bench", Path(image), Path(tmp) / "out.nii.gz"), pipeline,
                          OutputOptions(progress=False))
        kept = Path(image).parent / f"labels_{config_name}_{engine}_{backend}.nii.gz"
        os.replace(Path(tmp) / "out.nii.gz", kept)  # compared across backends
    suffix = "" if backend == "torch" else f" {backend}"
    return {"method": f"slicevos {config_name} {engine}{suffix}",
            "total_s": sum(report.timing_s.values()),
            "stages_s": report.timing_s, "peak_rss_mb": report.memory_mb["peak_rss_mb"],
            "peak_gpu_mb": report.memory_mb["peak_gpu_mb"], "keys": len(report.key_slices),
            "objects": len(report.organs)}


def time_baseline(image: str, device: str, max_tiles: int | None, mirror: bool,
                  threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from slicevos.benchmarks.nnunet_baseline import run_nnunet_baseline
    from slicevos.io.loader import load_volume

    volume = load_volume(image)
    result = run_nnunet_baseline(volume.hu, volume.spacing, device=device, mirror=mirror,
                                 max_tiles=max_tiles)
    return {"method": f"nnU-Net 3d_fullres{' + mirroring' if mirror else ''}",
            "total_s": result.total_s, "estimated_total_s": result.estimated_total_s,
            "stages_s": result.seconds, "tiles": f"{result.tiles_run}/{result.tiles_total}",
            "peak_rss_mb": result.memory.get("peak_rss_mb"),
            "peak_gpu_mb": result.memory.get("peak_gpu_mb")}


def _in_fresh_process(function, *args) -> dict[str, Any]:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'volume':>12} {'method':<32} {'seconds':>9} {'est. all':>9} {'peak RSS MB':>11} "
             f"{'GPU MB':>8} {'keys/objects':>12} {'vs slicevos fast':>16}"]
    for r in rows:
        est = r.get("estimated_total_s", r["total_s"])
        gpu = "-" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb']:.0f}"
        ko = f"{r['keys']}/{r['objects']}" if "keys" in r else r.get("tiles", "")
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.1f}x"
        lines.append(f"{r['volume']:>12} {r['method']:<32} {r['total_s']:>9.1f} {est:>9.1f} "
                     f"{r['peak_rss_mb'] or 0:>11.0f} {gpu:>8} {ko:>12} {ratio:>16}")
    return "\n".join(lines)


def _differing_voxels(folder: Path, config_name: str, engine: str, backend: str) -> int:
    """Voxels where the ``backend`` run's labels differ from the torch run's."""
    import nibabel as nib
    import numpy as np

    labels = [np.asarray(nib.load(folder / f"labels_{config_name}_{engine}_{b}.nii.gz").dataobj)
              for b in ("torch", backend)]
    return int((labels[0] != labels[1]).sum())


def stage_table(rows: list[dict[str, Any]]) -> str:
    """Seconds per pipeline stage (load, window, reference, propagation, ...) per run."""
    stages = list(dict.fromkeys(k for r in rows for k in r.get("stages_s", {})))
    lines = [f"{'volume':>12} {'method':<32}" + "".join(f"{s:>13}" for s in stages)
             + f"{'voxels != torch':>17}"]
    for r in rows:
        if "keys" in r:
            lines.append(f"{r['volume']:>12} {r['method']:<32}" + "".join(
                f"{r['stages_s'].get(s, 0.0):>13.2f}" for s in stages)
                + f"{r.get('voxels_unlike_torch', '-'):>17}")
    return "\n".join(lines)


def _body(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.depths:
            image = str(make_phantom_file(Path(tmp), depth, args.size))
            volume = f"{args.size}x{args.size}x{depth}"
            for name in args.configs:
                if "onnx" in args.backends:
                    _in_fresh_process(export_reference, name,
                                      str(Path(image).parent / f"onnx_{name}"), args.reference)
                for engine, backend in itertools.product(args.engines, args.backends):
                    row = _in_fresh_process(time_slicevos, image, name, args.device,
                                            args.reference, args.propagation, args.threads,
                                            engine, backend)
                    if backend != "torch" and "torch" in args.backends:
                        row["voxels_unlike_torch"] = _differing_voxels(
                            Path(image).parent, name, engine, backend)
                    rows.append({"volume": volume, **row})
                    print(format_table(rows[-1:]).splitlines()[-1], flush=True)
            if args.no_baseline:
                continue
            fast = next((r for r in rows if r["volume"] == volume
                         and r["method"] == f"slicevos {args.configs[-1]} {args.engines[0]}"),
                        None)
            for mirror in args.baseline_mirror:
                row = _in_fresh_process(time_baseline, image, args.device,
                                        args.baseline_max_tiles or None, bool(mirror),
                                        args.threads)
                if fast:
                    row["ratio"] = row["estimated_total_s"] / fast["total_s"]
                rows.append({"volume": volume, **row})
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + format_table(rows))
    if args.stages:
        print("\n" + stage_table(rows))
    print(f"targets: fast config with flow <= {TARGET_FLOW_100_S:.0f} s and with the STCN <= "
          f"{TARGET_FAST_100_S:.0f} s for 512x512x100; "
          f">= {TARGET_SPEEDUP:.0f}x faster than the nnU-Net baseline ('vs slicevos fast', "
          "estimated all-tile time / slicevos time)")
    if args.out:
        atomic_write_bytes(args.out, json.dumps(rows, indent=2).encode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    parser.add_argument("--configs", nargs="+", default=["paper", "fast_cpu"],
                        help="network configs; the last one is the baseline's comparison")
    parser.add_argument("--engines", nargs="+", default=["flow", "stcn"],
                        choices=("flow", "stcn"), help="propagation engines to time (the first "
                        "is the baseline's comparison)")
    parser.add_argument("--backends", nargs="+", default=["torch"], choices=("torch", "onnx"),
                        help="reference-stage backends to time (onnx: onnxruntime, CPU)")
    parser.add_argument("--stages", action="store_true",
                        help="print the seconds of every stage of every run")
    parser.add_argument("--reference", help="time this reference checkpoint instead")
    parser.add_argument("--propagation", help="time this propagation checkpoint instead")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--baseline-mirror", type=int, nargs="+", default=[0], choices=(0, 1),
                        help="0: no TTA, 1: nnU-Net's default 8x mirroring (both: 0 1)")
    parser.add_argument("--baseline-max-tiles", type=int, default=6,
                        help="CPU: stop after this many tiles and extrapolate (0 = all)")
    parser.add_argument("--out", help="write the rows as JSON")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
