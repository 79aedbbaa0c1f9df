"""slicevos-benchmark-propagation: what the propagation session costs on this machine.

Parts (``--parts``):

- ``speed``: seconds per propagated slice through a full ``PropagationSession`` (key encoding,
  memory reads, value encodings, both directions and fusion) for 1, 4 and 13 objects at
  128, 256 and 512 pixels, per config and object mode (``--modes``; joint = the config's
  network in joint mode over the 14 FLARE22 classes, fed the same 1/4/13-object key masks;
  random weights: speed does not depend on training). The key-encoder time per slice is
  measured in the same run as the yardstick column.
- ``memory``: peak RSS and wall time (``EfficiencyMeter``) of propagating one object through a
  long volume (default 512x512x300) from two keys.

- ``quality``: on the real volumes in ``--data`` with at least 20 slices (or, with ``--data
  phantom``, ``--phantom-cases`` phantoms of ``--phantom-shape`` from seeds ``--phantom-seed``,
  +1, ...: pick seeds no training set used; ``--data tumor_phantom``: phantoms with 2 or more
  liver/kidney tumors, FLARE23), the true labels on every N-th slice (N = 5, 10, 20) from
  each of ``--key-offsets`` (default 0 and N // 2: a score must not hinge on where the keys
  start) are the keys; per-organ DSC on all other slices for nearest-key copy, ITK
  morphological contour interpolation (when ``itk`` is installed) and, with ``--checkpoint``
  (one or more), trained propagation models through the session as their own engine's row
  (``stcn``, or ``guided`` for a flow-guided checkpoint) and ``fused`` rows; the flow engine's rows (``--flow-variants``: default settings and any overrides) in
  any case, and ``flow + rules``: what ``slicevos-infer --keys`` writes with default options
  (the pipeline: flow, then the schema's component rules, drawn keys kept). Each score is
  given on all non-key slices, on the organs' "bulk" and on their
  "ends" (``slicevos.benchmarks.propagation_quality``), with seconds per volume.
- ``flow_speed``: wall time, seconds per propagated slice and peak RSS of the flow engine
  (and, with ``--checkpoint``, of the checkpoints' engines) on a 512x512x150 phantom with 13
  organs keyed every 10 slices, beside ITK contour interpolation's and nearest-key copy's
  times in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slicevos.benchmarks.baselines import contour_interpolation, nearest_key_copy
from slicevos.benchmarks.propagation_quality import (
    Case,
    ScoreTable,
    key_layouts,
    phantom_cases,
    print_score_table,
    real_cases,
    split_dice,
)
from slicevos.cli.common import run_cli
from slicevos.config import apply_overrides, config_to_dict, from_dict, load_config
from slicevos.inference.config import InferenceConfig
from slicevos.inference.engines import FusionWeights, build_propagator, checkpoint_engine
from slicevos.inference.engines.flow.engine import FlowConfig, FlowPropagator
from slicevos.inference.engines.stcn.engine import Propagator
from slicevos.inference.engines.stcn.slice_scale import NETWORK_UPSAMPLE_BELOW
from slicevos.inference.pipeline import VolumePipeline
from slicevos.io import FLARE22, FLARE23, Volume
from slicevos.metrics.efficiency import EfficiencyMeter
from slicevos.models.propagation import PropagationNet
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.preprocessing.windowing import window_volume
from slicevos.training.propagation import PropagationConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "propagation"
INFERENCE_DEFAULT = CONFIGS.parent / "inference" / "default.yaml"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


MODES = ("per_object", "joint")


def _net(config_name: str, mode: str | None = None) -> PropagationNet:
    """The config's network with random weights; ``mode`` overrides its object mode (joint:
    the FLARE22 classes)."""
    torch.manual_seed(0)
    model = load_config(CONFIGS / f"{config_name}.yaml", PropagationConfig).model
    if mode is not None:
        model = dataclasses.replace(model, object_mode=mode, num_classes=FLARE22.num_classes)
    return PropagationNet(model)


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
               depth: int, modes: Sequence[str] = MODES) -> None:
    print(f"\n{'config':<10}{'mode':<12}{'size':>6}{'key enc s':>11}"
          + "".join(f"{f'{o} obj s/slice':>16}" for o in objects))
    for name in configs:
        nets = {mode: _net(name, mode).eval() for mode in modes}
        for size in sizes:
            for mode, net in nets.items():
                with torch.no_grad():
                    row = [_seconds_per_slice(net, size, o, depth) for o in objects]
                print(f"{name:<10}{mode:<12}{size:>6}{_key_encoder_seconds(net, size):>11.3f}"
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


def _propagate_with(propagator: Any) -> Any:
    """fn(keys, volume) -> labels through a session of ``propagator`` (any engine)."""
    def propagate(keys: dict[int, np.ndarray], volume: Volume) -> np.ndarray:
        session = propagator.start(window_volume(volume.hu, propagator.windows))
        for z, labels in keys.items():
            session.add_mask(z, labels)
        return session.run()
    return propagate


def _infer_default() -> Any:
    """fn(keys, volume) -> what ``slicevos-infer --keys`` writes with its default config
    (the pipeline: flow engine, component rules of the FLARE23 schema, keys as drawn)."""
    config = (load_config(INFERENCE_DEFAULT, InferenceConfig) if INFERENCE_DEFAULT.is_file()
              else InferenceConfig())
    pipeline = VolumePipeline.from_checkpoints(None, config=config, schema=FLARE23)
    return lambda keys, volume: pipeline.run(volume, keys).labels


def _flow_config(variant: str) -> FlowConfig:
    """``"default"`` or ``"key=value,key=value"`` overrides of FlowConfig (e.g.
    ``flow.preset=fast,clip=12``)."""
    if variant == "default":
        return FlowConfig()
    data = apply_overrides(config_to_dict(FlowConfig()), variant.split(","))
    return from_dict(FlowConfig, data, "--flow-variants")


def _methods(checkpoints: Sequence[str], flow_variants: Sequence[str] = ("default",),
             stcn_weights: Sequence[float] = (0.5,),
             upsample_below: Sequence[int] = (NETWORK_UPSAMPLE_BELOW,)) -> dict[str, Any]:
    """name -> fn(keys, volume) giving the labels (depth, H, W)."""
    methods: dict[str, Any] = {
        "nearest copy": lambda keys, volume: nearest_key_copy(keys, volume.num_slices)}
    if importlib.util.find_spec("itk") is not None:
        methods["contour interp"] = lambda keys, volume: contour_interpolation(
            keys, volume.num_slices)
    else:
        print("note: itk is not installed; contour interpolation skipped (pip install "
              '"slicevos[interp]")')
    for variant in flow_variants:
        methods["flow" if variant == "default" else f"flow {variant}"] = _propagate_with(
            FlowPropagator(_flow_config(variant)))
    methods["flow + rules"] = _infer_default()
    for name, propagator in _checkpoint_engines(checkpoints, stcn_weights, upsample_below):
        methods[name] = _propagate_with(propagator)
    return methods


def part_quality(cases: Iterator[Case], steps: Sequence[int],
                 checkpoints: Sequence[str] = (), flow_variants: Sequence[str] = ("default",),
                 stcn_weights: Sequence[float] = (0.5,), per_case: bool = False,
                 upsample_below: Sequence[int] = (NETWORK_UPSAMPLE_BELOW,),
                 offsets: Sequence[int] | None = None) -> ScoreTable:
    """Per-organ DSC (all non-key slices, bulk, ends: ``slicevos.benchmarks.propagation_quality``)
    of every method at every key layout (``key_layouts``), mean over the volumes; ``per_case``
    also prints each volume's table. Returns the mean table's lists of scores."""
    methods = _methods(checkpoints, flow_variants, stcn_weights, upsample_below)
    total: ScoreTable = {}
    used = []
    uncovered: dict[tuple[int, int], list[str]] = {}
    for case_name, volume, truth in cases:
        used.append(case_name)
        case: ScoreTable = {}
        for step, offset in key_layouts(steps, offsets):
            keys = list(range(offset, len(truth), step))
            missed = np.setdiff1d(np.unique(truth), np.unique(truth[keys]))
            uncovered.setdefault((step, offset), []).extend(
                f"{case_name}:{FLARE23.by_id(int(c)).name}" for c in missed if c)
            for name, method in methods.items():
                start = time.perf_counter()
                pred = method({z: truth[z] for z in keys}, volume)
                seconds = time.perf_counter() - start
                scores = split_dice(truth, pred, keys, FLARE23.ids)
                for split, table in scores.items():
                    for target in (total, case):
                        row = target.setdefault((step, offset, name, split), {})
                        row.setdefault("seconds", []).append(seconds)
                        for class_id, value in table.items():
                            row.setdefault(FLARE23.by_id(class_id).name, []).append(value)
        if per_case:
            print_score_table(case, [case_name])
    print_score_table(total, used)
    print("\norgans on no key slice (no engine can propagate them; they score 0 above):")
    for (step, offset), names in uncovered.items():
        print(f"  every {step} @{offset}: {', '.join(names) or 'none'}")
    return total


def _checkpoint_engines(checkpoints: Sequence[str], stcn_weights: Sequence[float],
                        upsample_below: Sequence[int] = (NETWORK_UPSAMPLE_BELOW,)
                        ) -> Iterator[tuple[str, Any]]:
    """(row name, propagator) for each checkpoint and network grid (``upsample_below``): its
    own engine (stcn, or guided for a flow-guided network) and ``fused`` at each of
    ``stcn_weights``."""
    for checkpoint, below in itertools.product(checkpoints, upsample_below):
        tag = "" if len(checkpoints) == 1 else f" {Path(checkpoint).parent.name}"
        tag += "" if len(upsample_below) == 1 else f" u{below}"
        engines = [(checkpoint_engine(checkpoint), None)] + [("fused", w) for w in stcn_weights]
        for engine, weight in engines:
            fusion = FusionWeights(stcn_weight=weight) if weight is not None else None
            suffix = "" if weight is None or len(stcn_weights) == 1 else f" w{weight:g}"
            yield f"{engine}{tag}{suffix}", build_propagator(engine, checkpoint, fusion=fusion,
                                                             upsample_below=below)


def part_flow_speed(size: int, depth: int, step: int, checkpoints: Sequence[str] = (),
                    stcn_weights: Sequence[float] = (0.5,), seed: int = 5) -> None:
    """Seconds (and per propagated slice) and peak RSS of the flow engine, and of the
    ``checkpoints``' engines, on a phantom of ``depth`` x ``size`` x ``size`` with its 13
    organs keyed every ``step`` slices, beside ITK's contour interpolation and nearest-key
    copy on the same keys in the same run. Peak RSS is the process's so far: only the first
    row's is that engine's own."""
    phantom = make_phantom(seed, PhantomConfig(shape=(depth, size, size)))
    keys = {z: phantom.labels[z] for z in range(0, depth, step)}
    engines = [("flow", FlowPropagator()), *_checkpoint_engines(checkpoints, stcn_weights)]
    rows = []
    for name, propagator in engines:
        image = window_volume(phantom.hu, propagator.windows)
        with EfficiencyMeter() as meter:
            session = propagator.start(image)
            for z, labels in keys.items():
                session.add_mask(z, labels)
            session.run()
        rows.append((name, meter.wall_time_s, f"{meter.peak_rss_mb:.0f}"))
    with EfficiencyMeter() as meter:
        nearest_key_copy(keys, depth)
    rows.append(("nearest copy", meter.wall_time_s, "-"))
    if importlib.util.find_spec("itk") is not None:
        start = time.perf_counter()
        contour_interpolation(keys, depth)
        rows.append(("contour interp (ITK)", time.perf_counter() - start, "(subprocess)"))
    objects = len(np.setdiff1d(np.unique(phantom.labels), [0]))
    propagated = depth - len(keys)
    print(f"\nengine speed: {depth}x{size}x{size} phantom, {objects} organs, keys every {step} "
          f"({len(keys)} keys, {propagated} slices propagated), {torch.get_num_threads()} torch "
          f"threads, flow threads {FlowConfig().flow.threads}")
    width = max(24, *(len(name) + 2 for name, _, _ in rows))
    print(f"{'method':<{width}}{'seconds':>9}{'s/slice':>9}{'peak RSS MB':>14}")
    for name, seconds, rss in rows:
        print(f"{name:<{width}}{seconds:>9.1f}{seconds / propagated:>9.3f}{rss:>14}")


def _body(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if "speed" in args.parts:
        part_speed(args.configs, args.sizes, args.objects, args.depth, args.modes)
    if "memory" in args.parts:
        part_memory(args.memory_config, args.memory_size, args.memory_depth)
    if "flow_speed" in args.parts:
        part_flow_speed(args.flow_size, args.flow_depth, args.flow_step,
                        args.checkpoint or (), args.stcn_weights)
    if "quality" in args.parts:
        cases = (phantom_cases(args.phantom_cases, args.phantom_shape, args.phantom_seed,
                                tumors=args.data == "tumor_phantom")
                 if args.data in ("phantom", "tumor_phantom")
                 else real_cases(Path(args.data), args.cases))
        part_quality(cases, args.key_steps, args.checkpoint or (), args.flow_variants,
                     args.stcn_weights, args.per_case, args.upsample_below, args.key_offsets)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-propagation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+",
                        default=["speed", "memory", "flow_speed", "quality"],
                        choices=("speed", "memory", "flow_speed", "quality"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", nargs="+", default=["fast_cpu", "paper"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 4, 13])
    parser.add_argument("--depth", type=int, default=5, help="speed: slices per test volume")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="speed: object modes to time")
    parser.add_argument("--memory-config", default="fast_cpu")
    parser.add_argument("--memory-size", type=int, default=512)
    parser.add_argument("--memory-depth", type=int, default=300)
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="quality: real cases folder, 'phantom', or 'tumor_phantom' "
                        "(phantoms with several tumors)")
    parser.add_argument("--phantom-cases", type=int, default=4)
    parser.add_argument("--phantom-shape", nargs=3, type=int, default=[48, 96, 96],
                        metavar=("D", "H", "W"))
    parser.add_argument("--phantom-seed", type=int, default=1000,
                        help="first phantom seed (held out: not a training case seed)")
    parser.add_argument("--key-steps", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--key-offsets", nargs="+", type=int,
                        help="quality: first key slice(s) of every step (default: 0 and N // 2)")
    parser.add_argument("--checkpoint", nargs="+",
                        help="quality and flow_speed: propagation checkpoint(s) to evaluate (their "
                        "own engine, stcn or guided, and fused)")
    parser.add_argument("--cases", nargs="+", help="quality: only these real volume folders")
    parser.add_argument("--per-case", action="store_true", help="quality: a table per volume")
    parser.add_argument("--flow-variants", nargs="+", default=["default"],
                        help="quality: flow rows, 'default' or KEY=VALUE,... overrides of the "
                        "flow config (e.g. flow.preset=fast,clip=12)")
    parser.add_argument("--stcn-weights", nargs="+", type=float, default=[0.5],
                        help="quality: fused rows' weight on the STCN probabilities")
    parser.add_argument("--upsample-below", nargs="+", type=int,
                        default=[NETWORK_UPSAMPLE_BELOW],
                        help="quality: network rows run slices smaller than this many pixels "
                        f"on a finer grid (default {NETWORK_UPSAMPLE_BELOW}; 0 = never; several "
                        "values: a row each)")
    parser.add_argument("--flow-size", type=int, default=512, help="flow_speed: slice size")
    parser.add_argument("--flow-depth", type=int, default=150, help="flow_speed: slices")
    parser.add_argument("--flow-step", type=int, default=10, help="flow_speed: keys every")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
