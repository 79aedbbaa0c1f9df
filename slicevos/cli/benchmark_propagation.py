"""slicevos-benchmark-propagation: what the propagation session costs on this machine.

Parts (``--parts``):

- ``speed``: seconds per propagated slice through a full ``PropagationSession`` (key encoding,
  memory reads, value encodings, both directions and fusion) for 1, 4 and 13 objects at
  128, 256 and 512 pixels, per config (random weights: speed does not depend on training).
  The key-encoder time per slice is measured in the same run as the yardstick column.
- ``memory``: peak RSS and wall time (``EfficiencyMeter``) of propagating one object through a
  long volume (default 512x512x300) from two keys.

Quality on real volumes (keys every 5/10/20 slices against nearest-key copy and contour
interpolation) needs a trained model and is not here yet.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from slicevos.cli.common import run_cli
from slicevos.config import load_config
from slicevos.inference.propagation import Propagator
from slicevos.metrics.efficiency import EfficiencyMeter
from slicevos.models.propagation import PropagationNet
from slicevos.training.propagation import PropagationConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "propagation"


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


def _body(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if "speed" in args.parts:
        part_speed(args.configs, args.sizes, args.objects, args.depth)
    if "memory" in args.parts:
        part_memory(args.memory_config, args.memory_size, args.memory_depth)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-propagation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["speed", "memory"],
                        choices=("speed", "memory"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", nargs="+", default=["fast_cpu", "paper"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 4, 13])
    parser.add_argument("--depth", type=int, default=5, help="speed: slices per test volume")
    parser.add_argument("--memory-config", default="fast_cpu")
    parser.add_argument("--memory-size", type=int, default=512)
    parser.add_argument("--memory-depth", type=int, default=300)
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
