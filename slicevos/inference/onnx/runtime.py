"""onnxruntime as a CPU backend for the reference stage.

``OnnxReferenceModel`` runs an exported reference graph (``slicevos-export``, part ``pair``,
``net_a``/``net_b`` or ``sum``) behind the call surface ``ReferenceSegmenter`` uses of a torch
model: ``model(images (B, C, H, W) float in [0, 1], positions (B,)) -> logits`` (a pair of
(B, K, H, W) tensors for ``pair``), ``output_stride``, ``num_classes``, ``.to()``, ``.eval()``.
A ``sum`` graph's probabilities come back as their logarithm, so a softmax gives the pair's
mean probability (and the two networks' disagreement is unknown: 0).

:func:`reference_onnx_path` finds or makes the graph for a checkpoint: a ``.onnx`` file is used
as it is; a ``.pt`` checkpoint is exported once into a cache folder (``SLICEVOS_CACHE`` or
``~/.cache/slicevos``), named by the checkpoint's content hash and the torch version, and
reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slicevos.errors import InputError
from slicevos.inference.onnx.export import OPSET, require
from slicevos.io.labels import get_schema
from slicevos.preprocessing.windowing import Window

log = logging.getLogger("slicevos.onnx")
CACHE_ENV = "SLICEVOS_CACHE"


def ort_session(path: str | PathLike, threads: int | None = None):
    """An onnxruntime CPU session for ``path``; ``threads`` intra-op threads (default: torch's
    thread count, so ``--threads`` and ``torch.set_num_threads`` govern both backends)."""
    ort = require("onnxruntime", path)
    if not Path(path).is_file():
        raise InputError(path, "ONNX file not found", "export it with slicevos-export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(path, f"onnxruntime cannot load the graph ({first})",
                         "re-export it with slicevos-export and this slicevos") from None


def graph_metadata(session: Any) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def windows_of(metadata: dict[str, str], path: str | PathLike) -> tuple[Window, ...]:
    if "windows" not in metadata:
        raise InputError(path, "the ONNX file lacks slicevos metadata (windows)",
                         "use a graph written by slicevos-export")
    return tuple(Window(w["level"], w["width"]) for w in json.loads(metadata["windows"]))


class OnnxReferenceModel:
    """An exported reference graph with the call surface of the torch pair (module doc)."""

    def __init__(self, path: str | PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = ort_session(path, threads)
        self.metadata = graph_metadata(self.session)
        if self.metadata.get("slicevos_kind") != "reference":
            raise InputError(path, f"the ONNX graph is a {self.metadata.get('slicevos_kind')!r}"
                             " graph, not a reference one", "export the reference checkpoint "
                             "with slicevos-export")
        self.part = self.metadata.get("part", "pair")
        self.output_stride = int(self.metadata["output_stride"])
        self.num_classes = int(self.metadata["num_classes"])
        self.in_channels = int(self.metadata["in_channels"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def to(self, device: str | torch.device) -> OnnxReferenceModel:
        if torch.device(device).type != "cpu":
            raise InputError(self.path, "the onnx backend runs on the CPU",
                             "use --backend torch on a GPU")
        return self

    def eval(self) -> OnnxReferenceModel:
        return self

    def __call__(self, images: torch.Tensor, positions: torch.Tensor
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Runs the slices one at a time: onnxruntime's memory arena grows to the largest
        batch it has run (1.4 GB for 4 fast_cpu slices of 512x512 against 0.5 GB for one), and
        one slice at a time was no slower (benchmark in docs/interoperability.md)."""
        feed = {"images": images.detach().float().contiguous().numpy(),
                "positions": positions.detach().float().contiguous().numpy()}
        parts = [self.session.run(self.outputs, {name: feed[name][i:i + 1]
                                                 for name in self.inputs})
                 for i in range(len(feed["images"]))]
        outputs = [torch.from_numpy(np.concatenate(column)) for column in zip(*parts, strict=True)]
        if self.part == "sum":
            return outputs[0].clamp_min(1e-12).log()
        return tuple(outputs) if len(outputs) == 2 else outputs[0]


def load_onnx_reference(path: str | PathLike, threads: int | None = None):
    """``(OnnxReferenceModel, ReferenceModelInfo)`` from an exported graph alone."""
    from slicevos.inference.reference.segmenter import ReferenceModelInfo

    model = OnnxReferenceModel(path, threads)
    spacing = model.metadata.get("spacing_mm")
    info = ReferenceModelInfo(get_schema(model.metadata["schema"]),
                              windows_of(model.metadata, path), Path(path),
                              None if spacing is None else float(spacing))
    return model, info


def cache_folder() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "slicevos") / "onnx"


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def reference_onnx_path(checkpoint: str | PathLike, part: str = "pair",
                        loaded: tuple[Any, Any] | None = None) -> Path:
    """The ONNX graph for a reference checkpoint: itself when it is a .onnx file, else the
    cached export (made now, once, when missing; see the module doc). ``loaded``: the
    checkpoint's pair and ``ReferenceModelInfo`` when the caller has loaded them already."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".onnx":
        return checkpoint
    if not checkpoint.is_file():
        raise InputError(checkpoint, "checkpoint file not found", "check the --reference path")
    name = (f"{checkpoint.stem}-{_content_hash(checkpoint)}-{part}-torch"
            f"{torch.__version__.split('+')[0]}-opset{OPSET}.onnx")
    target = cache_folder() / name
    if not target.is_file():
        from slicevos.inference.onnx.export import export_graph
        from slicevos.inference.onnx.graphs import reference_graphs, reference_spec

        log.info("exporting %s to ONNX once (cached as %s)", checkpoint, target)
        if loaded is None:
            (spec,) = reference_graphs(checkpoint, part)
        else:
            pair, info = loaded
            spec = reference_spec(pair, info.schema.name, info.windows, checkpoint.name, part,
                                  spacing_mm=info.spacing_mm)
        export_graph(spec, target)
    return target

