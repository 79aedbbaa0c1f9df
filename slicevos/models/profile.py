"""Size and speed of a network: parameters, FLOPs and forward time for one input size.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` and count a multiply-add as 2
FLOPs (halve them for the "GMACs" that many papers call GFLOPs); only matmul/convolution-type
ops are counted, so normalisation and activations are left out.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def profile_model(model: nn.Module, input_size: Sequence[int], device: str | torch.device = "cpu",
                  repeats: int = 5, batch_size: int = 1, warmup: int = 1) -> dict[str, float]:
    """Profile ``model(images, positions)`` on random images of ``input_size`` (C, H, W).

    Returns ``params_m`` (millions of parameters), ``gflops`` (per forward of ``batch_size``
    images, multiply-add = 2) and ``forward_ms`` (median wall time over ``repeats`` forwards
    after ``warmup`` untimed ones, eval mode, no autograd). The model is left in eval mode
    on ``device``.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    images = torch.rand(batch_size, *input_size, device=device)
    positions = torch.full((batch_size,), 0.5, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images, positions)
    for _ in range(warmup):
        model(images, positions)
    times = []
    for _ in range(max(1, repeats)):
        _synchronize(device)
        start = time.perf_counter()
        model(images, positions)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
        "forward_ms": statistics.median(times) * 1e3,
    }
