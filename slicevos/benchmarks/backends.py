"""PyTorch against onnxruntime (fp32 and dynamic int8) for one reference network, in one run.

``compare_backends(net, ...)`` exports the network, quantises the export, then times one
512x512 forward (median of ``repeats``, batch 1) with each backend at each thread count, and
counts the pixels whose class (argmax) each onnxruntime graph gives as PyTorch does, on
windowed phantom slices (and the real ones given).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slicevos.inference.onnx.export import export_graph, quantize_int8
from slicevos.inference.onnx.graphs import reference_spec
from slicevos.inference.onnx.runtime import ort_session


class _OneNet(nn.Module):
    """A single network in the pair's shape, so the pair's graph spec exports it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net_a = net
        self.num_classes, self.in_channels = net.num_classes, net.in_channels
        self.output_stride = net.output_stride

    def forward(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.net_a(images, positions)


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def compare_backends(net: nn.Module, windows: tuple, images: np.ndarray, positions: np.ndarray,
                     threads: Sequence[int] = (1, 2), repeats: int = 3,
                     size: int = 512) -> list[dict]:
    """One row per thread count: ``torch_ms``, ``onnx_ms``, ``int8_ms`` (a 1 x C x size x
    size forward) and ``onnx_agree`` / ``int8_agree`` (argmax agreement with PyTorch on
    ``images`` float (N, C, H, W) in [0, 1] with their ``positions``)."""
    net = net.eval()
    with tempfile.TemporaryDirectory() as tmp:
        spec = reference_spec(_OneNet(net), "flare22", windows, "benchmark", part="net_a")
        fp32 = export_graph(spec, Path(tmp) / "net.onnx")
        int8 = quantize_int8(fp32, Path(tmp) / "net.int8.onnx")
        sample = torch.rand(1, net.in_channels, size, size)
        middle = torch.full((1,), 0.5)
        with torch.no_grad():
            expected = net(torch.from_numpy(images), torch.from_numpy(positions)).argmax(1)
        rows = []
        for count in threads:
            torch.set_num_threads(count)
            row = {"threads": count}
            with torch.no_grad():
                row["torch_ms"] = _median_ms(lambda: net(sample, middle), repeats)
            for name, graph in (("onnx", fp32), ("int8", int8)):
                session = ort_session(graph, count)
                feed = {"images": sample.numpy(), "positions": middle.numpy()}
                row[f"{name}_ms"] = _median_ms(lambda s=session, f=feed: s.run(None, f),
                                               repeats)
                (logits,) = session.run(None, {"images": images, "positions": positions})
                row[f"{name}_agree"] = float((logits.argmax(1) == expected.numpy()).mean())
            rows.append(row)
    return rows
