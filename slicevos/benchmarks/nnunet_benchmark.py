"""Time the nnU-Net 3d_fullres baseline on phantom-sized volumes (issue 5, "Measure").

``tools/benchmark_speed.py`` calls :func:`benchmark_baseline` beside its own slicevos runs. On a
CPU a full run takes hours (tens of seconds per 96x160x160 tile, x8 with mirroring), so
``max_tiles`` / ``max_tiles_mirror`` stop the sliding window early; each row then carries the
measured per-tile time and ``estimated_total_s`` = preprocess + resample back (both measured on
the whole volume) + per-tile time x every tile. Peak memory is measured either way: the full-size
buffers are allocated whatever ``max_tiles`` is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from slicevos.benchmarks.nnunet_baseline import (
    NNUNetPlan,
    build_plain_conv_unet,
    run_nnunet_baseline,
)
from slicevos.phantom import PhantomConfig


def phantom_spacing(depth: int, size: int) -> tuple[float, float, float]:
    """(dz, dy, dx) mm of a default phantom of ``depth`` slices of ``size`` x ``size``."""
    return tuple(PhantomConfig(shape=(depth, size, size)).grid().spacing)


def random_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """(D, H, W) float32 HU drawn uniformly in [-1000, 1000): the content changes no timing."""
    return np.random.default_rng(seed).uniform(-1000, 1000, shape).astype(np.float32)


def _warm_up(net: torch.nn.Module, plan: NNUNetPlan, device: str) -> None:
    """One forward pass outside the timing (CUDA context, cuDNN plans); CPU needs none."""
    if torch.device(device).type != "cuda":
        return
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        net.to(device)(torch.zeros((1, 1, *plan.patch_size), device=device))
    torch.cuda.synchronize(device)


def benchmark_baseline(depths: Sequence[int] = (100, 300), size: int = 512,
                       spacing: tuple[float, float, float] | None = None,
                       mirror_modes: Sequence[bool] = (False, True), plan: NNUNetPlan | None = None,
                       device: str = "cpu", max_tiles: int | None = None,
                       max_tiles_mirror: int | None = None, seed: int = 0,
                       progress: bool = False) -> list[dict[str, Any]]:
    """One row per (depth, mirroring) for a random HU volume of (depth, size, size).

    ``spacing`` (dz, dy, dx) mm; None: the default phantom's for that shape (what
    ``slicevos.phantom.generator`` would generate). Rows hold seconds per stage, ``seconds_per_tile``,
    ``total_s`` (measured), ``estimated_total_s`` (all tiles; == total_s when none were skipped),
    peak memory in MB and the load average around the run (the CPU may be shared).
    """
    plan = plan or NNUNetPlan()
    net = build_plain_conv_unet(plan)
    _warm_up(net, plan, device)
    rows = []
    for depth in depths:
        shape = (depth, size, size)
        spacing_mm = tuple(spacing) if spacing is not None else phantom_spacing(depth, size)
        hu = random_ct(shape, seed)
        for mirror in mirror_modes:
            load_before = os.getloadavg()[0]
            result = run_nnunet_baseline(hu, spacing_mm, plan, device=device, mirror=mirror, net=net,
                                         max_tiles=max_tiles_mirror if mirror else max_tiles,
                                         progress=progress)
            rows.append({
                "method": "nnU-Net 3d_fullres (PlainConvUNet, random weights)",
                "tta": "mirroring x8 (nnU-Net default)" if mirror else "none",
                "device": str(device), "torch_threads": torch.get_num_threads(),
                "shape": shape, "spacing_mm": spacing_mm, "resampled_shape": result.resampled_shape,
                "patch_size": plan.patch_size, "tiles_total": result.tiles_total,
                "tiles_run": result.tiles_run, "extrapolated": result.tiles_run < result.tiles_total,
                **{f"{name}_s": value for name, value in result.seconds.items()},
                "seconds_per_tile": result.seconds_per_tile, "total_s": result.total_s,
                "estimated_total_s": result.estimated_total_s,
                "peak_rss_mb": result.memory["peak_rss_mb"],
                "peak_cuda_mb": result.memory["peak_cuda_mb"],
                "peak_gpu_mb": result.memory["peak_gpu_mb"],
                "loadavg_1min": (load_before, os.getloadavg()[0]),
            })
    return rows
