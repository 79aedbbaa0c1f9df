"""slicevos-benchmark-reference: the reference module's cost and the value of CPS.

Parts (``--parts``, default all):

- ``profile``: parameters, GFLOPs and forward time per 512x512 slice of each network in the
  paper and fast configs, next to a plain ResNet-18 measured in the same run (the yardstick
  column divides by its time, so figures compare across noisy shared machines).
- ``iteration``: seconds per training iteration (CPS and, as the same-run baseline, supervised
  only) for the tiny (64x64) and fast (256x256) configs on phantoms.
- ``compare``: supervised-only vs CPS with the same labeled phantoms, seed and iterations (CPS
  adds unlabeled phantoms); per-organ 3D DSC on held-out phantoms.
- ``backends``: each network of the paper and fast configs (random init) and of the shipped
  demo checkpoint (trained on phantoms) with PyTorch, onnxruntime fp32 and onnxruntime
  dynamic int8, at 1 and 2 threads: ms per 512x512 slice, and the share of pixels whose
  class agrees with PyTorch on phantom slices (and ``--real`` scans).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from slicevos.cli.common import run_cli
from slicevos.config import load_config
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.io.labels import FLARE22
from slicevos.models.profile import profile_model
from slicevos.models.registry import build_model
from slicevos.phantom import PhantomConfig, write_phantom_dataset
from slicevos.training.reference import ReferenceConfig, ReferenceTrainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "reference"


def _load(name: str, *assignments: str) -> ReferenceConfig:
    return load_config(CONFIGS / f"{name}.yaml", ReferenceConfig, assignments=list(assignments))


class _Yardstick(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = timm.create_model("resnet18", pretrained=False, num_classes=0)

    def forward(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def part_profile(repeats: int) -> None:
    rows = [("resnet18 (yardstick)", profile_model(_Yardstick(), (3, 512, 512), repeats=repeats))]
    for config_name in ("paper", "fast_cpu"):
        pair = _load(config_name, "data.cache_dir=unused").model
        for model_cfg in (pair.model_a, pair.model_b):
            net = build_model(model_cfg, FLARE22.num_classes, 3)
            rows.append((f"{config_name}/{model_cfg.name}", profile_model(net, (3, 512, 512),
                                                                         repeats=repeats)))
    base = rows[0][1]["forward_ms"]
    print(f"\n{'network (512x512, batch 1, CPU)':<32}{'params M':>10}{'GFLOPs':>9}{'fwd ms':>9}"
          f"{'x yardstick':>13}")
    for name, r in rows:
        print(f"{name:<32}{r['params_m']:>10.2f}{r['gflops']:>9.1f}{r['forward_ms']:>9.0f}"
              f"{r['forward_ms'] / base:>13.2f}")


def _phantom_cache(root: Path, size: int, slices: int, labeled: int, unlabeled: int) -> Path:
    write_phantom_dataset(root / "ds", n_labeled=labeled, n_unlabeled=unlabeled,
                          config=PhantomConfig(shape=(slices, size, size)), seed=0,
                          progress=False)
    prepare_cache(root / "ds", root / "cache", PrepareConfig(schema="flare22"), progress=False)
    return root / "cache"


class _TimedTrainer(ReferenceTrainer):
    """Stamps the start of every training step; differences = seconds per iteration."""

    def train_step(self, step: int) -> dict[str, Any]:
        self.stamps.append(time.perf_counter())
        return super().train_step(step)


def _seconds_per_iteration(config: ReferenceConfig, iterations: int) -> float:
    trainer = _TimedTrainer(config)
    trainer.stamps = []
    trainer.fit()
    return float(np.median(np.diff(trainer.stamps[1:])))  # skip the warm-up step


def part_iteration(iterations: int) -> None:
    print(f"\n{'config':<12}{'crop':>9}{'supervised s/it':>17}{'CPS s/it':>10}{'CPS / sup':>11}")
    for name, size in (("tiny", 64), ("fast_cpu", 256)):
        with tempfile.TemporaryDirectory() as tmp:
            cache = _phantom_cache(Path(tmp), size, 8, labeled=2, unlabeled=1)
            times = {}
            for mode in ("supervised", "cps"):
                config = _load(name, f"data.cache_dir={cache}", f"train.out_dir={tmp}/{mode}",
                               f"train.iterations={iterations + 2}", "train.val_every=100000",
                               "train.checkpoint_every=100000", "train.progress=false",
                               f"cps.mode={mode}", "data.augment=null")
                times[mode] = _seconds_per_iteration(config, iterations)
        print(f"{name:<12}{size:>5}x{size:<3}{times['supervised']:>17.3f}{times['cps']:>10.3f}"
              f"{times['cps'] / times['supervised']:>11.2f}")


def part_compare(args: argparse.Namespace) -> None:
    labeled, heldout = args.labeled, args.heldout
    with tempfile.TemporaryDirectory() as tmp:
        cache = _phantom_cache(Path(tmp), args.size, args.slices, labeled + heldout, args.unlabeled)
        val_cases = [f"phantom_{i:04d}" for i in range(labeled, labeled + heldout)]
        results = {}
        for mode in args.modes:
            config = _load(args.config, f"data.cache_dir={cache}", f"train.out_dir={tmp}/{mode}",
                           f"data.crop_size=[{args.size}, {args.size}]",
                           f"data.val_cases=[{', '.join(val_cases)}]",
                           f"train.iterations={args.iterations}",
                           f"train.val_every={args.iterations}",
                           f"train.checkpoint_every={args.iterations}",
                           f"train.optim.milestones=[{int(args.iterations * 0.8)}, "
                           f"{int(args.iterations * 0.9)}]",
                           f"cps.rampup_iterations={args.iterations // 5}", f"cps.mode={mode}",
                           f"train.seed={args.seed}", f"data.seed={args.seed}", *args.set)
            if mode == "supervised":
                config = replace(config, data=replace(config.data, batch_unlabeled=0))
            start = time.perf_counter()
            results[mode] = ReferenceTrainer(config).fit()
            results[mode]["_minutes"] = (time.perf_counter() - start) / 60
    print(f"\nheld-out DSC: {labeled} labeled (+{args.unlabeled} unlabeled for CPS), {heldout} "
          f"held-out phantoms {args.size}x{args.size}x{args.slices}, config {args.config}, "
          f"{args.iterations} iterations, seed {args.seed}, overrides {args.set or 'none'}")
    modes = list(results)
    delta = modes == ["supervised", "cps"]
    print(f"{'organ':<22}" + "".join(f"{m:>11}" for m in modes) + ("   delta" if delta else ""))
    for key, name in [(f"dice/{c.name}", c.name) for c in FLARE22.classes] + [("dice_mean", "mean")]:
        if key in results[modes[0]]:
            row = "".join(f"{results[m][key]:>11.3f}" for m in modes)
            extra = f"{results['cps'][key] - results['supervised'][key]:>+8.3f}" if delta else ""
            print(f"{name:<22}{row}{extra}")
    print("training minutes: " + ", ".join(f"{m} {results[m]['_minutes']:.1f}" for m in modes))


def _backend_networks() -> list[tuple[str, torch.nn.Module, tuple]]:
    from slicevos.inference.reference.segmenter import load_reference_pair
    from slicevos.preprocessing.windowing import resolve_windows

    nets = []
    for config_name in ("fast_cpu", "paper"):
        pair = _load(config_name, "data.cache_dir=unused").model
        for model_cfg in (pair.model_a, pair.model_b):
            torch.manual_seed(0)
            nets.append((f"{config_name}/{model_cfg.name}",
                         build_model(model_cfg, FLARE22.num_classes, 3), resolve_windows()))
    demo = CONFIGS.parents[1] / "checkpoints" / "demo_reference.pt"
    if demo.is_file():
        pair, info = load_reference_pair(demo)
        nets += [(f"demo (trained)/{name}", net, info.windows)
                 for name, net in (("a", pair.net_a), ("b", pair.net_b))]
    return nets


def _check_slices(windows: tuple, real: Sequence[str], count: int = 3
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Windowed slices float (N, C, 512, 512) in [0, 1] and their relative positions."""
    from slicevos.inference.onnx.samples import spread_slices
    from slicevos.io.loader import load_volume
    from slicevos.phantom import make_phantom
    from slicevos.preprocessing.position import relative_position
    from slicevos.preprocessing.windowing import window_volume

    volumes = [make_phantom(0, PhantomConfig(shape=(count, 512, 512))).hu]
    volumes += [load_volume(path).hu for path in real]
    images, positions = [], []
    for hu in volumes:
        picked = spread_slices(len(hu), count)
        windowed = window_volume(hu[picked][:, :512, :512], windows)
        canvas = np.zeros((len(picked), len(windows), 512, 512), np.float32)  # pad to 512
        canvas[..., :windowed.shape[-2], :windowed.shape[-1]] = windowed / np.float32(255)
        images.append(canvas)
        positions.append(relative_position(picked, len(hu)).astype(np.float32))
    return np.concatenate(images), np.concatenate(positions)


def part_backends(args: argparse.Namespace) -> None:
    from slicevos.benchmarks.backends import compare_backends

    print(f"\n{'network (512x512, batch 1)':<34}{'threads':>8}{'torch ms':>10}{'onnx ms':>9}"
          f"{'x torch':>8}{'agree':>9}{'int8 ms':>9}{'x torch':>8}{'agree':>9}")
    for name, net, windows in _backend_networks():
        images, positions = _check_slices(windows, args.real)
        for r in compare_backends(net, windows, images, positions, args.backend_threads,
                                  args.repeats):
            print(f"{name:<34}{r['threads']:>8}{r['torch_ms']:>10.0f}{r['onnx_ms']:>9.0f}"
                  f"{r['torch_ms'] / r['onnx_ms']:>8.2f}{100 * r['onnx_agree']:>8.2f}%"
                  f"{r['int8_ms']:>9.0f}{r['torch_ms'] / r['int8_ms']:>8.2f}"
                  f"{100 * r['int8_agree']:>8.2f}%", flush=True)
    print("x torch: PyTorch ms / onnxruntime ms (> 1: onnxruntime is faster); agree: pixels "
          "whose class matches PyTorch's")


def _body(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if "profile" in args.parts:
        part_profile(args.repeats)
    if "iteration" in args.parts:
        part_iteration(args.timed_iterations)
    if "compare" in args.parts:
        part_compare(args)
    if "backends" in args.parts:
        part_backends(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["profile", "iteration", "compare"],
                        choices=("profile", "iteration", "compare", "backends"))
    parser.add_argument("--backend-threads", type=int, nargs="+", default=[1, 2],
                        help="backends: thread counts")
    parser.add_argument("--real", nargs="*", default=[], metavar="CT",
                        help="backends: also check agreement on slices of these scans")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="profile: timed forwards")
    parser.add_argument("--timed-iterations", type=int, default=5)
    parser.add_argument("--config", default="tiny", help="compare: configs/reference/NAME.yaml")
    parser.add_argument("--size", type=int, default=96, help="compare: phantom slice size")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=["supervised", "cps"],
                        choices=("supervised", "cps"), help="compare: which runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="compare: config overrides for every run, e.g. cps.weight=0.5")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
