"""Write :class:`~slicevos.inference.onnx.graphs.GraphSpec` graphs as ONNX files, optionally
int8-quantised, and check each against PyTorch.

The export uses ``torch.onnx.export(dynamo=True)`` at a fixed opset (:data:`OPSET`) with the
spec's dynamic axes; the weights are stored inside the file, and the spec's metadata (kind,
schema, windows, stride, slicevos version) go into the model's ``metadata_props``. Files are
written atomically.

The check runs the torch module and onnxruntime on the same inputs and reports the largest
absolute difference of any output and, for class scores, the share of pixels whose argmax
agrees (for single logits, whose sign agrees).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from slicevos.errors import InputError
from slicevos.inference.onnx.graphs import GraphSpec
from slicevos.io.atomic import atomic_path

log = logging.getLogger("slicevos.export")
OPSET = 18
INSTALL_FIX = 'install the ONNX extra: pip install "slicevos[onnx]"'


def require(module: str, path: str | PathLike | None = None):
    """Import ``module`` (onnx, onnxruntime, onnxscript) or raise the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(path, f"ONNX export and runtime need {module}, which is not installed",
                         INSTALL_FIX) from None


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantiser's progress prints, INFO logs and warnings."""
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def export_graph(spec: GraphSpec, path: str | PathLike, opset: int = OPSET) -> Path:
    """Export ``spec`` to ``path`` (one self-contained .onnx file) and return the path."""
    require("onnxscript", path)
    path = Path(path)
    args = tuple(spec.inputs.values())
    dynamic = {name: spec.dynamic.get(name) for name in spec.inputs}
    with _quiet(), torch.no_grad():
        try:
            program = torch.onnx.export(
                spec.module.eval(), args, input_names=list(spec.inputs),
                output_names=list(spec.outputs), opset_version=opset, dynamo=True,
                dynamic_shapes=dynamic, external_data=False, verbose=False,
                report=False)
        except Exception as err:  # torch.export / onnxscript failures carry long traces
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise InputError(path, f"the {spec.name} graph does not export to ONNX ({first})",
                             "report it with the checkpoint's config; the other graphs still "
                             "export") from None
    program.model.metadata_props.update({**spec.metadata, "graph": spec.name,
                                         "opset": str(opset)})
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
    return path


def quantize_int8(source: str | PathLike, path: str | PathLike) -> Path:
    """onnxruntime dynamic int8 quantisation of ``source`` (weights int8, activations
    quantised on the fly) to ``path``; the metadata is kept."""
    quantization = require("onnxruntime.quantization", source)
    onnx = require("onnx", source)
    path = Path(path)
    with atomic_path(path) as tmp, _quiet():
        quantization.quantize_dynamic(str(source), str(tmp),
                                      weight_type=quantization.QuantType.QInt8)
        model = onnx.load(str(tmp))
        meta = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
        meta["quantized"] = "int8_dynamic"
        onnx.helper.set_model_props(model, meta)
        onnx.save(model, str(tmp))
    return path


@dataclass(frozen=True)
class GraphCheck:
    """PyTorch against onnxruntime on ``samples`` inputs: ``max_abs_diff`` over all outputs;
    ``agreement``: share of argmax (class scores) or sign (single logits) that agree, None for
    feature maps."""

    graph: str
    source: str
    samples: int
    max_abs_diff: float
    agreement: float | None

    def passed(self, min_agreement: float = 0.999) -> bool:
        return self.agreement is None or self.agreement >= min_agreement


def _agreement(reference: np.ndarray, exported: np.ndarray, axis: int | None,
               name: str) -> float | None:
    if axis is not None:
        return float((reference.argmax(axis) == exported.argmax(axis)).mean())
    if name == "logits":
        return float(((reference > 0) == (exported > 0)).mean())
    return None


def check_graph(spec: GraphSpec, path: str | PathLike, batches: Iterable[dict[str, torch.Tensor]],
                source: str, threads: int | None = None) -> GraphCheck:
    """Run ``spec.module`` and the exported ``path`` on each batch (input name -> tensor)."""
    from slicevos.inference.onnx.runtime import ort_session

    session = ort_session(path, threads)
    worst, agree_sum, agree_n, samples = 0.0, 0.0, 0, 0
    for batch in batches:
        with torch.no_grad():
            expected = spec.module.eval()(*batch.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        feed = {name: tensor.numpy() for name, tensor in batch.items()}
        outputs = session.run(list(spec.outputs), feed)
        for name, ref, out in zip(spec.outputs, expected, outputs, strict=True):
            ref = ref.float().numpy()
            worst = max(worst, float(np.abs(ref - out).max()))
            agreement = _agreement(ref, out, spec.score_axis, name)
            if agreement is not None:
                agree_sum, agree_n = agree_sum + agreement, agree_n + 1
        samples += len(next(iter(batch.values())))
    return GraphCheck(spec.name, source, samples, worst,
                      agree_sum / agree_n if agree_n else None)
