"""What ``slicevos-export`` turns into ONNX graphs: one :class:`GraphSpec` per graph.

A spec names the graph, holds the torch module to trace, example inputs (whose sizes only
seed the export: batch, slice size and object count stay dynamic where the network allows),
the output names and the metadata stored in the file, so the graph can be run without the
checkpoint (:mod:`slicevos.inference.onnx.runtime`).

Graphs per checkpoint kind:

- reference (``reference_cps``), ``part``:
    ``pair``: ``images`` (B, C, H, W) float in [0, 1], ``positions`` (B,) relative slice
    position in [0, 1] -> ``logits_a``, ``logits_b`` (B, K, H, W); H and W multiples of
    ``output_stride``. ``sum``: the same inputs -> ``probabilities`` (B, K, H, W), the sum of
    both softmaxes in [0, 2]. ``net_a`` / ``net_b``: one network -> ``logits``.
- localizer: ``images`` (B, C, H, W) any size -> ``logits`` (B,), > 0 meaning abdomen.
- propagation (STCN): three graphs, the memory read staying outside (top-k over a growing
  memory is cheap and shape-dynamic): ``key_encoder`` images -> key, f16, f8, f4;
  ``value_encoder`` images, f16, masks[, others] -> values (B, O, Cv, h, w);
  ``decoder`` key features + readout (B, O, Cv, h, w)[, prior] -> logits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

import slicevos
from slicevos.errors import InputError
from slicevos.io.checkpoint import load_checkpoint
from slicevos.preprocessing.windowing import Window

REFERENCE_PARTS = ("pair", "sum", "net_a", "net_b")
KINDS = {"reference_cps": "reference", "localizer": "localizer", "propagation": "propagation"}
MAX_BATCH = 1024
MAX_SIDE = 4096


@dataclass
class GraphSpec:
    """One graph to export. ``inputs``: example tensors by input name, in call order;
    ``dynamic``: per input, axis -> torch.export Dim; ``score_axis``: the class axis of the
    outputs for the argmax check (None: outputs are features or one logit, compared by value
    and sign)."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, Dim]]
    metadata: dict[str, str] = field(default_factory=dict)
    score_axis: int | None = 1


class _PairSum(nn.Module):
    """The CPS pair's summed softmax (``CPSPair.predict_proba``)."""

    def __init__(self, pair: nn.Module) -> None:
        super().__init__()
        self.pair = pair

    def forward(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.pair.predict_proba(images, positions)


class _KeyEncoder(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.net.key_encoder(images)
        return features.key, features.f16, features.f8, features.f4


class _ValueEncoder(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor,
                others: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.encode_value(images, f16, masks, others)


class _Decoder(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, key: torch.Tensor, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor,
                readout: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        from slicevos.models.propagation.encoders import KeyFeatures

        return self.net.decode(KeyFeatures(key, f16, f8, f4), readout, prior)


def _windows_json(windows: tuple[Window, ...]) -> str:
    return json.dumps([{"level": w.level, "width": w.width} for w in windows])


def _base_metadata(source: str, kind: str, windows: tuple[Window, ...]) -> dict[str, str]:
    return {"slicevos_version": slicevos.__version__, "slicevos_kind": kind,
            "source_checkpoint": source, "windows": _windows_json(windows)}


def _grid_dims(stride: int) -> tuple[Dim, Dim]:
    """The slice size in units of ``stride`` (rows, columns): H = stride * rows."""
    return (Dim("rows", min=1, max=MAX_SIDE // stride),
            Dim("cols", min=1, max=MAX_SIDE // stride))


def checkpoint_kind(path: str | PathLike) -> str:
    """``reference``, ``localizer`` or ``propagation`` for a slicevos checkpoint."""
    payload = load_checkpoint(path)
    kind = KINDS.get(str(payload.get("kind")))
    if kind is None:
        raise InputError(path, f"checkpoint kind {payload.get('kind')!r} has no ONNX export",
                         "pass a reference, localizer or propagation checkpoint")
    return kind


def reference_graphs(path: str | PathLike, part: str = "pair", size: int = 64
                     ) -> list[GraphSpec]:
    """The reference checkpoint as one graph (see the module doc for ``part``)."""
    from slicevos.inference.reference.segmenter import load_reference_pair

    if part not in REFERENCE_PARTS:
        raise InputError(path, f"unknown reference part {part!r}", f"use one of {REFERENCE_PARTS}")
    pair, info = load_reference_pair(path, "cpu")
    return [reference_spec(pair, info.schema.name, info.windows, Path(path).name, part, size,
                           spacing_mm=info.spacing_mm)]


def reference_spec(pair: nn.Module, schema: str, windows: tuple[Window, ...], source: str,
                   part: str = "pair", size: int = 64, spacing_mm: float | None = None
                   ) -> GraphSpec:
    """The graph of a CPS pair (``part`` as in the module doc); ``spacing_mm``: the in-plane
    pixel size the pair was trained at (metadata, so the runtime resamples slices to it)."""
    stride = pair.output_stride
    side = max(size // stride, 1) * stride
    batch = Dim("batch", min=1, max=MAX_BATCH)
    rows, cols = _grid_dims(stride)
    module, outputs = {
        "pair": lambda: (pair, ("logits_a", "logits_b")),
        "sum": lambda: (_PairSum(pair), ("probabilities",)),
        "net_a": lambda: (pair.net_a, ("logits",)), "net_b": lambda: (pair.net_b, ("logits",)),
    }[part]()
    metadata = {**_base_metadata(source, "reference", windows), "part": part,
                "schema": schema, "num_classes": str(pair.num_classes),
                "in_channels": str(pair.in_channels), "output_stride": str(stride)}
    if spacing_mm is not None:
        metadata["spacing_mm"] = str(spacing_mm)
    inputs = {"images": torch.rand(2, pair.in_channels, side, side),
              "positions": torch.tensor([0.25, 0.75])}
    dynamic = {"images": {0: batch, 2: stride * rows, 3: stride * cols}, "positions": {0: batch}}
    return GraphSpec(f"reference_{part}", module, inputs, outputs, dynamic, metadata)


def localizer_graphs(path: str | PathLike, size: int = 64) -> list[GraphSpec]:
    from slicevos.inference.localizer import Localizer

    localizer = Localizer.from_checkpoint(path, "cpu")
    model = localizer.model
    metadata = {**_base_metadata(Path(path).name, "localizer", localizer.windows),
                "in_channels": str(model.in_channels), "input_size": str(model.input_size)}
    batch = Dim("batch", min=1, max=MAX_BATCH)
    rows, cols = Dim("height", min=2, max=MAX_SIDE), Dim("width", min=2, max=MAX_SIDE)
    inputs = {"images": torch.rand(2, model.in_channels, size + 3, size + 5)}
    return [GraphSpec("localizer", model, inputs, ("logits",),
                      {"images": {0: batch, 2: rows, 3: cols}}, metadata, score_axis=None)]


def propagation_graphs(path: str | PathLike, size: int = 64) -> list[GraphSpec]:
    """The STCN's key encoder, value encoder and decoder (see the module doc)."""
    from slicevos.inference.engines.stcn.engine import load_propagation_net

    net, windows = load_propagation_net(path, "cpu")
    cfg = net.config
    side = max(size // net.output_stride, 1) * net.output_stride
    objects = 1 if net.joint else 2
    mask_planes = cfg.num_classes if net.joint else objects
    base = {**_base_metadata(Path(path).name, "propagation", windows),
            "object_mode": cfg.object_mode, "num_classes": str(cfg.num_classes),
            "output_stride": str(net.output_stride)}
    images = torch.rand(2, net.in_channels, side, side)
    with torch.no_grad():
        key, f16, f8, f4 = _KeyEncoder(net)(images)
        masks = (torch.rand(2, mask_planes, side, side) > 0.5).float()
        values = net.encode_value(images, f16, masks)
    batch = Dim("batch", min=1, max=MAX_BATCH)
    obj = Dim("objects", min=1, max=255)
    rows, cols = _grid_dims(net.output_stride)  # the stride-16 grid; images are 16x larger

    def scaled(factor: int, first: int = 2) -> dict[int, Dim]:
        return {0: batch, first: factor * rows, first + 1: factor * cols}

    image_dims, feature = scaled(16), scaled(1)
    mask_dims = scaled(16) if net.joint else {**scaled(16), 1: obj}
    value_inputs = {"images": images, "f16": f16, "masks": masks}
    value_dynamic = {"images": image_dims, "f16": feature, "masks": mask_dims}
    if not net.joint:
        value_inputs["others"] = 1.0 - masks
        value_dynamic["others"] = mask_dims
    readout_dims = scaled(1, first=3) if net.joint else {**scaled(1, first=3), 1: obj}
    decoder_inputs = {"key": key, "f16": f16, "f8": f8, "f4": f4, "readout": values}
    decoder_dynamic = {"key": feature, "f16": feature, "f8": scaled(2), "f4": scaled(4),
                       "readout": readout_dims}
    if cfg.prior_input:
        decoder_inputs["prior"] = torch.randn(2, mask_planes, side, side) * 4
        decoder_dynamic["prior"] = scaled(16) if net.joint else {**scaled(16), 1: obj}
    return [
        GraphSpec("stcn_key_encoder", _KeyEncoder(net), {"images": images},
                  ("key", "f16", "f8", "f4"), {"images": image_dims},
                  {**base, "part": "key_encoder"}, score_axis=None),
        GraphSpec("stcn_value_encoder", _ValueEncoder(net), value_inputs, ("values",),
                  value_dynamic, {**base, "part": "value_encoder"}, score_axis=None),
        GraphSpec("stcn_decoder", _Decoder(net), decoder_inputs, ("logits",), decoder_dynamic,
                  {**base, "part": "decoder"}, score_axis=1 if net.joint else None),
    ]


GRAPH_BUILDERS: dict[str, Callable[..., list[GraphSpec]]] = {
    "reference": reference_graphs, "localizer": localizer_graphs,
    "propagation": propagation_graphs}
