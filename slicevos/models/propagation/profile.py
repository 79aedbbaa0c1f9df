"""Stage timings of :class:`PropagationNet` for one slice (``slicevos.models.profile`` style).

``profile_propagation(net, (H, W), objects=(1, 4, 13))`` returns one row per object count
with the median milliseconds (eval mode, no autograd) of ``encode_key`` (one slice),
``encode_value`` (O objects), ``read_memory`` (``memory_slices`` slices in memory, top-k) and
``decode`` (O objects). In joint mode ``objects`` is ignored: one pass for all classes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from slicevos.models.propagation.network import PropagationNet


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int,
               warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


@torch.no_grad()
def profile_propagation(net: PropagationNet, size: tuple[int, int] = (512, 512),
                        objects: Sequence[int] = (1, 4, 13), memory_slices: int = 2,
                        repeats: int = 3, warmup: int = 1,
                        device: str | torch.device = "cpu"
                        ) -> list[dict[str, float]]:
    """Rows ``{objects, params_m, encode_key_ms, encode_value_ms, read_memory_ms, decode_ms,
    value_plus_decode_ms}`` for each object count (one row with objects = K in joint mode)."""
    device = torch.device(device)
    net = net.to(device).eval()
    height, width = size
    images = torch.rand(1, net.in_channels, height, width, device=device)
    features = net.encode_key(images)
    key_ms = _median_ms(lambda: net.encode_key(images), device, repeats, warmup)
    params_m = sum(p.numel() for p in net.parameters()) / 1e6
    counts = [net.num_classes] if net.joint else list(objects)
    rows = []
    for count in counts:
        masks = torch.rand(1, count, height, width, device=device)
        values = net.encode_value(images, features.f16, masks)
        memory_keys = features.key.unsqueeze(2).expand(-1, -1, memory_slices, -1, -1)
        memory_values = values.unsqueeze(3).expand(-1, -1, -1, memory_slices, -1, -1)
        readout = net.read_memory(features.key, memory_keys, memory_values, net.config.top_k)
        value_ms = _median_ms(lambda m=masks: net.encode_value(images, features.f16, m),
                              device, repeats, warmup)
        read_ms = _median_ms(lambda k=memory_keys, v=memory_values: net.read_memory(
            features.key, k, v, net.config.top_k), device, repeats, warmup)
        decode_ms = _median_ms(lambda r=readout: net.decode(features, r), device, repeats, warmup)
        rows.append({"objects": count, "params_m": params_m, "encode_key_ms": key_ms,
                     "encode_value_ms": value_ms, "read_memory_ms": read_ms,
                     "decode_ms": decode_ms, "value_plus_decode_ms": value_ms + decode_ms})
    return rows
