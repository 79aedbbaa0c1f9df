"""The real-CT recipe: training at a fixed pixel size, inference resampling to it, and the
leave-one-patient-out driver (run here on phantoms laid out like ../shared/data/real)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slicevos.benchmarks.real_folds import FoldSettings, run_fold
from slicevos.data.sampling import to_spacing
from slicevos.inference.reference.segmenter import ReferenceSegmenter, load_reference_pair
from slicevos.io.nifti import save_labels
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.phantom.dataset import save_ct

ROOT = Path(__file__).resolve().parents[1]


def test_to_spacing_resamples_image_and_labels():
    image = np.zeros((3, 40, 60), np.uint8)
    image[:, 10:30, 20:40] = 200
    labels = (image[0] > 0).astype(np.uint8) * 7
    out_image, out_labels = to_spacing(image, labels, (1.0, 1.0), 2.0)
    assert out_image.shape == (3, 20, 30) and out_image.dtype == np.uint8
    assert out_labels.shape == (20, 30) and set(np.unique(out_labels)) == {0, 7}
    assert (out_labels == 7).sum() == 100  # 20x20 mm square at 2 mm pixels
    same_image, same_labels = to_spacing(image, labels, (1.0, 1.0), None)
    assert same_image is image and same_labels is labels
    grown, _ = to_spacing(image, None, (3.0, 3.0), 1.5)
    assert grown.shape == (3, 80, 120)


class _Threshold(torch.nn.Module):
    """Class 1 where the first channel is bright; records the input sizes it sees."""

    output_stride = 1

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(images.shape[-2:]))
        bright = (images[:, :1] - 0.5) * 40
        return torch.cat([-bright, bright], 1)


def test_segmenter_resamples_to_the_model_spacing_and_back():
    model = _Threshold()
    segmenter = ReferenceSegmenter(model)
    images = np.zeros((2, 3, 48, 64), np.uint8)
    images[:, :, 8:40, 16:48] = 255
    positions = np.array([0.0, 1.0])
    segmenter.model_spacing_mm, segmenter.input_spacing = 2.0, (0.5, 0.5)
    labels = segmenter.segment(images, positions)
    assert model.sizes[-1] == (12, 16)  # 4x fewer pixels per side
    assert labels.shape == (2, 48, 64)
    truth = (images[:, 0] > 0).astype(np.uint8)
    agreement = (labels == truth).mean()
    assert agreement > 0.97
    segmenter.input_spacing = None  # spacing unknown: slices as they are
    segmenter.segment(images, positions)
    assert model.sizes[-1] == (48, 64)


def _write_patient(real: Path, name: str, seed: int, keep: tuple[int, ...] | None = None) -> None:
    phantom = make_phantom(seed, PhantomConfig(shape=(20, 64, 64), z_range_mm=(-400.0, 450.0)))
    labels = phantom.labels
    if keep is not None:
        labels = np.where(np.isin(labels, keep), labels, 0).astype(np.uint8)
    (real / name).mkdir(parents=True)
    save_ct(phantom.hu, phantom.geometry, real / name / "ct.nii.gz")
    save_labels(labels, phantom.geometry, real / name / "label_flare.nii.gz")


@pytest.mark.slow
def test_leave_one_patient_out_fold_on_phantoms(tmp_path):
    real = tmp_path / "real"
    for name, seed in (("patient_a", 1), ("patient_b", 2)):
        _write_patient(real, name, seed)
    _write_patient(real, "liver_only", 3, keep=(1,))  # FLARE id 1: liver
    settings = FoldSettings(
        reference_config=str(ROOT / "configs/reference/tiny.yaml"),
        localizer_config=str(ROOT / "configs/localizer/tiny.yaml"),
        reference_iterations=3, localizer_iterations=3,
        assignments=("data.spacing_mm=7.5", "data.unlabeled_from_labeled=true",
                     "train.val_every=1000", "train.best_metric=null"),
        progress=False)
    result = run_fold(real, "patient_b", tmp_path / "out", settings,
                      patients=("patient_a", "patient_b"), partial={"liver_only": ("liver",)})
    assert result["train_cases"] == ["patient_a", "liver_only"]
    annotations = (tmp_path / "out/fold-patient_b/dataset/annotations.json").read_text()
    assert '"liver_only"' in annotations and '"liver"' in annotations
    evaluation = result["evaluation"]
    assert evaluation["case"] == "patient_b" and "liver" in evaluation["organs"]
    assert {"reference", "automatic"} <= set(evaluation["rows"])
    for row in evaluation["rows"].values():
        assert set(row) == set(evaluation["organs"])
        assert all(0.0 <= s["dsc"] <= 1.0 for s in row.values())
    if evaluation["key_slices"]:
        assert {"oracle keys + flow", "oracle keys + copy"} <= set(evaluation["rows"])
    _, info = load_reference_pair(result["reference_checkpoint"])
    assert info.spacing_mm == 7.5  # the checkpoint carries the pixel size it was trained at
    localizer = result["localizer"]
    assert 0 <= localizer["range"][0] <= localizer["range"][1] <= localizer["depth"]
    assert 0.0 <= localizer["skipped_share"] <= 1.0
    assert (tmp_path / "out/fold-patient_b/result.json").is_file()
    # a rerun resumes: the runs are finished, nothing is trained again
    again = run_fold(real, "patient_b", tmp_path / "out", settings,
                     patients=("patient_a", "patient_b"), partial={"liver_only": ("liver",)})
    assert again["evaluation"]["rows"] == evaluation["rows"]


def test_cli_rejects_unknown_patient(capsys):
    from slicevos.cli.real_folds import main

    code = main(["--real", str(ROOT), "--folds", "nobody"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown patient" in err and len(err.strip().splitlines()) == 1


def test_onnx_graph_metadata_carries_the_training_pixel_size():
    import yaml

    from slicevos.config import from_dict
    from slicevos.inference.onnx.graphs import reference_spec
    from slicevos.models.reference.cps import CPSConfig, build_cps_pair
    from slicevos.preprocessing.windowing import resolve_windows

    model = yaml.safe_load((ROOT / "configs/reference/tiny.yaml").read_text())["model"]
    pair = build_cps_pair(from_dict(CPSConfig, model), 14, 3)
    windows = tuple(resolve_windows(["abdomen", "chest", "spine"]))
    assert reference_spec(pair, "flare22", windows, "x.pt", spacing_mm=1.5).metadata[
        "spacing_mm"] == "1.5"
    assert "spacing_mm" not in reference_spec(pair, "flare22", windows, "x.pt").metadata
