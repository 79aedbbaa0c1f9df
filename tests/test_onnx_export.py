"""ONNX export (slicevos-export) and the onnxruntime reference backend, on tiny random networks
and the shipped demo checkpoint: every graph matches PyTorch on phantom and real slices, keeps
its dynamic axes and metadata, and the pipeline gives the same labels with either backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from slicevos.cli.export import main as export_main  # noqa: E402
from slicevos.config import from_dict  # noqa: E402
from slicevos.inference.onnx.export import check_graph, export_graph, quantize_int8  # noqa: E402
from slicevos.inference.onnx.graphs import GRAPH_BUILDERS, checkpoint_kind  # noqa: E402
from slicevos.inference.onnx.runtime import (  # noqa: E402
    OnnxReferenceModel,
    load_onnx_reference,
    ort_session,
    windows_of,
)
from slicevos.inference.onnx.samples import graph_inputs  # noqa: E402
from slicevos.io.checkpoint import make_payload, save_checkpoint  # noqa: E402
from slicevos.phantom import PhantomConfig, make_phantom  # noqa: E402
from slicevos.preprocessing.windowing import resolve_windows  # noqa: E402

# one worker runs this module, so its exports (about a minute) are made once
pytestmark = pytest.mark.xdist_group("onnx")
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEMO_REFERENCE = ROOT / "checkpoints" / "demo_reference.pt"


def _windows_extra(windows) -> dict:
    return {"windows": [{"level": w.level, "width": w.width} for w in windows]}


def tiny_checkpoint(folder: Path, kind: str) -> Path:
    """A random tiny network of ``kind`` saved as its trainer would (config + weights)."""
    torch.manual_seed(0)
    windows = resolve_windows()
    if kind == "localizer":
        from slicevos.models.localizer import LocalizerModelConfig, LocalizerNet

        config = yaml.safe_load((CONFIGS / "localizer" / "tiny.yaml").read_text())
        windows = resolve_windows(["abdomen"])
        model = LocalizerNet(from_dict(LocalizerModelConfig, config["model"]), len(windows))
    else:
        from slicevos.models.propagation import PropagationModelConfig, PropagationNet

        config = yaml.safe_load((CONFIGS / "propagation" / "tiny.yaml").read_text())
        model_config = from_dict(PropagationModelConfig, config["model"])
        model = PropagationNet(dataclasses.replace(model_config, num_classes=14,
                                                   in_channels=len(windows)))
    payload = make_payload(kind, config, model.state_dict(), 0, extra=_windows_extra(windows))
    return save_checkpoint(folder / f"{kind}.pt", payload)


@pytest.fixture(scope="module")
def phantom_hu() -> np.ndarray:
    return make_phantom(3, PhantomConfig(shape=(12, 80, 96))).hu


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[list, list[Path]]]:
    """Every kind exported once: kind -> (graph specs, files); the reference is the shipped
    demo pair (trained), exported through the backend's cache as ``slicevos-infer`` does."""
    from slicevos.inference.onnx.runtime import reference_onnx_path

    folder = tmp_path_factory.mktemp("onnx")
    out = {"reference_cps": (GRAPH_BUILDERS["reference"](DEMO_REFERENCE),
                             [reference_onnx_path(DEMO_REFERENCE)])}
    for kind in ("localizer", "propagation"):
        checkpoint = tiny_checkpoint(folder, kind)
        specs = GRAPH_BUILDERS[checkpoint_kind(checkpoint)](checkpoint)
        out[kind] = (specs, [export_graph(s, folder / f"{s.name}.onnx") for s in specs])
    return out


@pytest.mark.parametrize("kind", ["reference_cps", "localizer", "propagation"])
def test_every_graph_matches_pytorch_on_phantom_slices(exported, phantom_hu, kind):
    specs, files = exported[kind]
    assert [s.name for s in specs] == {
        "reference_cps": ["reference_pair"], "localizer": ["localizer"],
        "propagation": ["stcn_key_encoder", "stcn_value_encoder", "stcn_decoder"]}[kind]
    for spec, path in zip(specs, files, strict=True):
        # 5 slices of 80x96: another batch and slice size than the export's example (2, 64x64)
        batches = list(graph_inputs(spec, phantom_hu, windows_of(spec.metadata, path), 5))
        assert len(next(iter(batches[0].values()))) == 5
        check = check_graph(spec, path, batches, "phantom")
        assert check.samples == 5
        assert check.max_abs_diff < 1e-3, check
        assert check.passed(0.999), check


def test_reference_graph_keeps_position_input_and_metadata(exported):
    _, (path,) = exported["reference_cps"]
    session = ort_session(path, 1)
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["images", "positions"]
    assert isinstance(inputs["images"][0], str) and isinstance(inputs["images"][2], str)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["schema"] == "flare22" and meta["part"] == "pair" and meta["opset"] == "18"
    assert windows_of(meta, path) == resolve_windows()
    model, info = load_onnx_reference(path, threads=1)
    assert info.schema.name == "flare22" and model.num_classes == 14
    # the position changes the output: the input is live, not folded away
    images = torch.rand(2, 3, 64, 64)
    low, high = (model(images, torch.tensor([p, p]))[0] for p in (0.0, 1.0))
    assert not torch.allclose(low, high)


def test_int8_graph_keeps_metadata_and_runs(exported, tmp_path):
    _, (path,) = exported["reference_cps"]
    int8 = quantize_int8(path, tmp_path / "ref.int8.onnx")
    meta = ort_session(int8, 1).get_modelmeta().custom_metadata_map
    assert meta["quantized"] == "int8_dynamic" and meta["schema"] == "flare22"
    logits_a, logits_b = OnnxReferenceModel(int8, 1)(torch.rand(1, 3, 64, 64), torch.zeros(1))
    assert logits_a.shape == logits_b.shape == (1, 14, 64, 64)


def test_reference_graph_matches_pytorch_on_real_slices(exported, real_data):
    from slicevos.io.loader import load_volume

    (spec,), (path,) = exported["reference_cps"]
    hu = load_volume(real_data / "example_ct_sm30" / "ct.nii.gz").hu
    check = check_graph(spec, path, graph_inputs(spec, hu, windows_of(spec.metadata, path), 4),
                        "example_ct_sm30")
    assert check.samples == 4 and check.agreement >= 0.999, check


def test_cli_exports_checks_and_quantises(tmp_path, capsys, real_data):
    checkpoint = tiny_checkpoint(tmp_path, "localizer")
    ct = real_data / "example_ct_sm30" / "ct.nii.gz"
    out = tmp_path / "loc.onnx"
    assert export_main([str(checkpoint), str(out), "--check-volume", str(ct),
                        "--check-slices", "3", "--quantize", "int8",
                        "--min-agreement", "0.5"]) == 0
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines() if line.startswith("localizer")]
    assert [(r[0], r[-4] if r[1] == "int8" else r[1]) for r in rows] == [
        ("localizer", "phantom"), ("localizer", "example_ct_sm30/ct.nii.gz"),
        ("localizer", "phantom"), ("localizer", "example_ct_sm30/ct.nii.gz")], table
    assert float(rows[0][-1].rstrip("%")) == 100.0
    assert out.is_file() and (tmp_path / "loc.int8.onnx").is_file()
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("backend", ["onnx", "graph"])
def test_pipeline_labels_match_with_onnxruntime(exported, backend):
    """The demo model on a phantom: the automatic pipeline gives the same labels with the
    onnx backend (the cached export of the .pt) and with the .onnx file, as with PyTorch."""
    from slicevos.inference.config import InferenceConfig
    from slicevos.inference.pipeline import VolumePipeline
    from slicevos.io.volume import Volume

    phantom = make_phantom(1, PhantomConfig(shape=(24, 96, 96)))
    volume = Volume(phantom.hu, phantom.geometry)
    _, (graph,) = exported["reference_cps"]
    reference = graph if backend == "graph" else DEMO_REFERENCE
    runs = {}
    for name, ref, option in (("torch", DEMO_REFERENCE, "torch"), (backend, reference, "auto")):
        config = InferenceConfig(backend=option, key_stride=4)
        pipeline = VolumePipeline.from_checkpoints(None, ref, None, config, "cpu")
        runs[name] = pipeline.run(volume).labels
        assert isinstance(pipeline.reference.model, OnnxReferenceModel) == (name != "torch")
    assert runs["torch"].any()
    np.testing.assert_array_equal(runs["torch"], runs[backend])


def test_auto_backend_falls_back_to_torch_when_export_fails(monkeypatch):
    import slicevos.inference.onnx.runtime as runtime
    from slicevos.errors import InputError, InputWarning
    from slicevos.inference.reference.segmenter import ReferenceSegmenter

    def broken(path, part="pair", loaded=None):
        raise InputError(path, "the reference_pair graph does not export to ONNX (boom)", "x")

    monkeypatch.setattr(runtime, "reference_onnx_path", broken)
    with pytest.warns(InputWarning, match="onnx backend is unavailable"):
        segmenter = ReferenceSegmenter.from_checkpoint(DEMO_REFERENCE, backend="auto")
    assert isinstance(segmenter.model, torch.nn.Module)
    with pytest.raises(InputError, match="does not export"):
        ReferenceSegmenter.from_checkpoint(DEMO_REFERENCE, backend="onnx")


def test_bad_input_gets_one_line_errors(tmp_path, capsys, exported):
    assert export_main([str(DEMO_REFERENCE), str(tmp_path / "out.pt"), "--no-check"]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    toy = save_checkpoint(tmp_path / "toy.pt", make_payload("toy", {}, {}, 0))
    assert export_main([str(toy), str(tmp_path / "toy.onnx")]) == 2
    assert "has no ONNX export" in capsys.readouterr().err
    _, files = exported["localizer"]
    with pytest.raises(Exception, match="not a reference one"):
        OnnxReferenceModel(files[0], 1)
