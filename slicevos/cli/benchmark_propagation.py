"""slicevos-benchmark-propagation: what the propagation session costs on this machine.

Parts (``--parts``):

- ``speed``: seconds per propagated slice through a full ``PropagationSession`` (key encoding,
  memory reads, value encodings, both directions and fusion) for 1, 4 and 13 objects at
  128, 256 and 512 pixels, per config (random weights: speed does not depend on training).
  The key-encoder time per slice is measured in the same run as the yardstick column.
- ``memory``: peak RSS and wall time (``EfficiencyMeter``) of propagating one object through a
  long volume (default 512x512x300) from two keys.

- ``quality``: on the real volumes in ``--data`` with at least 20 slices, the true FLARE labels
  on every N-th slice (N = 5, 10, 20) are the keys; per-organ DSC on all other slices for
  nearest-key copy, ITK morphological contour interpolation (when ``itk`` is installed) and,
  with ``--checkpoint``, a trained propagation model through the session.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slicevos.cli.common import run_cli
from slicevos.config import load_config
from slicevos.inference.baselines import contour_interpolation, nearest_key_copy
from slicevos.inference.propagation import Propagator, load_propagation_net
from slicevos.io import FLARE22, load_labels, load_volume
from slicevos.metrics.efficiency import EfficiencyMeter
from slicevos.metrics.overlap import dice
from slicevos.models.propagation import PropagationNet
from slicevos.preprocessing.windowing import window_volume
from slicevos.training.propagation import PropagationConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "propagation"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def _net(config_name: str) -> PropagationNet:
    torch.manual_seed(0)
    return PropagationNet(load_config(CONFIGS / f"{config_name}.yaml", PropagationConfig).model)


def _volume(depth: int, size: int, objects: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random windowed image (D, 3, S, S) and a key mask with ``objects`` disk-like blobs."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (depth, 3, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for o in range(objects):
        cy, cx = rng.integers(size // 8, size - size // 8, 2)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 10) ** 2] = o + 1
    return image, mask


def _seconds_per_slice(net: PropagationNet, size: int, objects: int, depth: int) -> float:
    image, mask = _volume(depth, size, objects)
    session = Propagator(net, feature_dtype=torch.float32).start(image)
    session.add_mask(depth // 2, mask)
    start = time.perf_counter()
    session.run()
    return (time.perf_counter() - start) / (depth - 1)


def _key_encoder_seconds(net: PropagationNet, size: int) -> float:
    images = torch.rand(1, net.in_channels, size, size)
    with torch.no_grad():
        net.encode_key(images)
        start = time.perf_counter()
        net.encode_key(images)
    return time.perf_counter() - start


def part_speed(configs: Sequence[str], sizes: Sequence[int], objects: Sequence[int],
               depth: int) -> None:
    print(f"\n{'config':<10}{'size':>6}{'key enc s':>11}"
          + "".join(f"{f'{o} obj s/slice':>16}" for o in objects))
    for name in configs:
        net = _net(name).eval()
        for size in sizes:
            with torch.no_grad():
                row = [_seconds_per_slice(net, size, o, depth) for o in objects]
            print(f"{name:<10}{size:>6}{_key_encoder_seconds(net, size):>11.3f}"
                  + "".join(f"{t:>16.3f}" for t in row))


def part_memory(config: str, size: int, depth: int) -> None:
    net = _net(config).eval()
    image, mask = _volume(depth, size, 1)
    with EfficiencyMeter() as meter, torch.no_grad():
        session = Propagator(net).start(image)
        session.add_mask(depth // 3, mask)
        session.add_mask(2 * depth // 3, mask)
        labels = session.run()
    print(f"\n{config}: {depth}x{size}x{size}, 1 object, 2 keys: wall {meter.wall_time_s:.1f} s "
          f"({meter.wall_time_s / (depth - 2):.3f} s/slice), peak RSS {meter.peak_rss_mb:.0f} MB, "
          f"image {image.nbytes / 2**20:.0f} MB, labels {labels.nbytes / 2**20:.0f} MB")


def _methods(checkpoint: str | None) -> dict[str, Any]:
    methods: dict[str, Any] = {"nearest copy": nearest_key_copy}
    try:
        import itk  # noqa: F401

        methods["contour interp"] = contour_interpolation
    except ImportError:
        print("note: itk is not installed; contour interpolation skipped (pip install "
              '"slicevos[interp]")')
    if checkpoint:
        net, windows = load_propagation_net(checkpoint)

        def propagate(keys: dict[int, np.ndarray], depth: int, image: np.ndarray) -> np.ndarray:
            session = Propagator(net, feature_dtype=torch.float32).start(
                window_volume(image, windows))
            for z, labels in keys.items():
                session.add_mask(z, labels)
            return session.run()

        methods["stcn"] = propagate
    return methods


def part_quality(data: Path, steps: Sequence[int], checkpoint: str | None) -> None:
    cases = [c for c in sorted(data.glob("*/label_flare.nii.gz"))]
    methods = _methods(checkpoint)
    scores: dict[tuple[int, str], dict[str, list[float]]] = {}
    used = []
    for label_file in cases:
        volume = load_volume(label_file.parent / "ct.nii.gz")
        truth, _ = load_labels(label_file, reference=volume, schema=FLARE22)
        if len(truth) < 20:
            continue
        used.append(label_file.parent.name)
        for step in steps:
            key_z = list(range(0, len(truth), step))
            keys = {z: truth[z] for z in key_z}
            others = np.array([z for z in range(len(truth)) if z not in keys])
            for name, method in methods.items():
                args = (keys, len(truth), volume.hu) if name == "stcn" else (keys, len(truth))
                pred = method(*args)
                table = scores.setdefault((step, name), {})
                present = [c for c in FLARE22.classes if (truth[others] == c.id).any()]
                for c in present:
                    table.setdefault(c.name, []).append(
                        dice(truth[others] == c.id, pred[others] == c.id))
    organs = [c.name for c in FLARE22.classes if any(c.name in t for t in scores.values())]
    short = {n: n.replace("inferior_vena_cava", "ivc").replace("_adrenal_gland", "_adr")[:9]
             for n in organs}
    print(f"\nDSC on non-key slices, mean over the real volumes with >= 20 slices "
          f"({', '.join(used)})")
    print(f"{'keys':<9}{'method':<16}" + "".join(f"{short[o]:>10}" for o in organs)
          + f"{'mean':>8}")
    for (step, name), table in sorted(scores.items()):
        means = [float(np.mean(table[o])) if o in table else float("nan") for o in organs]
        print(f"{'every ' + str(step):<9}{name:<16}" + "".join(f"{m:>10.3f}" for m in means)
              + f"{np.nanmean(means):>8.3f}")


def _body(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if "speed" in args.parts:
        part_speed(args.configs, args.sizes, args.objects, args.depth)
    if "memory" in args.parts:
        part_memory(args.memory_config, args.memory_size, args.memory_depth)
    if "quality" in args.parts:
        part_quality(Path(args.data), args.key_steps, args.checkpoint)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-propagation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["speed", "memory", "quality"],
                        choices=("speed", "memory", "quality"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", nargs="+", default=["fast_cpu", "paper"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 4, 13])
    parser.add_argument("--depth", type=int, default=5, help="speed: slices per test volume")
    parser.add_argument("--memory-config", default="fast_cpu")
    parser.add_argument("--memory-size", type=int, default=512)
    parser.add_argument("--memory-depth", type=int, default=300)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="quality: real cases folder")
    parser.add_argument("--key-steps", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--checkpoint", help="quality: a propagation checkpoint to evaluate")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
