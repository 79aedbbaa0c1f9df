"""Check inputs for exported graphs, made from CT slices (a phantom, and real scans when given).

Each graph gets the inputs it would see at inference: the checkpoint's windows applied to
evenly spread slices of the volume, scaled to [0, 1] and padded to the network's stride, with
their relative slice positions; the STCN graphs also get object masks (bands of the first
window channel: the check is numerical, not about anatomy), the key features and a memory
readout computed by the torch network on the same slices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from slicevos.inference.onnx.graphs import GraphSpec
from slicevos.preprocessing.padding import pad_to_multiple
from slicevos.preprocessing.position import relative_position
from slicevos.preprocessing.windowing import Window, window_volume


def spread_slices(depth: int, count: int) -> np.ndarray:
    """``count`` slice indices spread evenly over ``depth`` slices (ends included)."""
    return np.unique(np.linspace(0, depth - 1, max(1, count)).round().astype(int))


def _images(hu: np.ndarray, windows: tuple[Window, ...], picked: np.ndarray,
            stride: int) -> torch.Tensor:
    windowed = window_volume(hu[picked], windows)  # (n, C, H, W) uint8
    images = torch.from_numpy(np.ascontiguousarray(windowed)).float().div_(255.0)
    return pad_to_multiple(images, stride) if stride > 1 else images


def _band_masks(images: torch.Tensor, planes: int) -> torch.Tensor:
    """(B, planes, H, W) float masks: intensity bands of channel 0 (the last band is the
    background when ``planes`` are classes)."""
    edges = torch.linspace(0.0, 1.0, planes + 1)
    intensity = images[:, 0]
    return torch.stack([((intensity >= lo) & (intensity < hi)).float()
                        for lo, hi in zip(edges[:-1], edges[1:], strict=True)], dim=1)


def graph_inputs(spec: GraphSpec, hu: np.ndarray, windows: tuple[Window, ...],
                 count: int) -> Iterator[dict[str, torch.Tensor]]:
    """One batch of check inputs for ``spec`` from ``count`` slices of ``hu`` (D, H, W)."""
    picked = spread_slices(len(hu), count)
    stride = int(spec.metadata.get("output_stride", 1))
    images = _images(hu, windows, picked, stride)
    if spec.name.startswith("reference"):
        positions = torch.from_numpy(relative_position(picked, len(hu)).astype(np.float32))
        yield {"images": images, "positions": positions}
    elif spec.name == "localizer":
        yield {"images": images}
    else:
        yield _stcn_inputs(spec, images)


@torch.no_grad()
def _stcn_inputs(spec: GraphSpec, images: torch.Tensor) -> dict[str, torch.Tensor]:
    net = spec.module.net
    features = net.key_encoder(images)
    if spec.name == "stcn_key_encoder":
        return {"images": images}
    planes = net.num_classes if net.joint else 2
    masks = _band_masks(images, planes)
    inputs = {"images": images, "f16": features.f16, "masks": masks}
    if not net.joint:
        inputs["others"] = 1.0 - masks
    if spec.name == "stcn_value_encoder":
        return inputs
    readout = net.encode_value(images, features.f16, masks)
    decoder = {"key": features.key, "f16": features.f16, "f8": features.f8,
               "f4": features.f4, "readout": readout}
    if "prior" in spec.inputs:
        decoder["prior"] = (masks * 2 - 1) * 8.0
    return decoder
