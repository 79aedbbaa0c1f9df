"""slicevos-evaluate on tiny synthetic NIfTI folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from slicevos.cli.evaluate import main
from slicevos.errors import InputError
from slicevos.io.labels import FLARE22
from slicevos.metrics import evaluate_folders, match_cases

AFFINE = np.diag([-1.5, -1.5, 2.0, 1.0])  # LPS file axes, spacing (dz, dy, dx) = (2, 1.5, 1.5)


def write_labels(path: Path, labels: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(path))
    return path


def make_case(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """File-ordered (i, j, k) GT with liver and spleen; prediction with the liver shifted."""
    gt = np.zeros((16, 16, 8), np.uint8)
    gt[2:8, 2:8, 1:6] = 1
    gt[10:14, 9:14, 2:6] = 3
    pred = gt.copy()
    pred[gt == 1] = 0
    pred[2 + shift:8 + shift, 2:8, 1:6] = 1
    return gt, pred


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "metrics_per_case.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    for case, shift in (("case_a", 0), ("case_b", 3)):
        gt, pred = make_case(shift)
        write_labels(tmp_path / "gt" / f"{case}.nii.gz", gt)
        write_labels(tmp_path / "pred" / f"{case}.nii.gz", pred)
    return tmp_path / "pred", tmp_path / "gt"


def test_cli_writes_csv_and_json(folders, tmp_path, capsys):
    pred, gt = folders
    out = tmp_path / "out"
    assert main([str(pred), str(gt), "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out)
    assert len(rows) == 2 * 13
    assert list(rows[0]) == ["case", "class_id", "class_name", "dsc", "nsd"]
    by_key = {(r["case"], r["class_name"]): r for r in rows}
    assert float(by_key["case_a", "liver"]["dsc"]) == 1.0
    assert float(by_key["case_b", "liver"]["dsc"]) == pytest.approx(0.5)
    # 3 voxels x 1.5 mm (dx, not dz = 2 mm) = 4.5 mm <= the liver's 5 mm tolerance
    assert float(by_key["case_b", "liver"]["nsd"]) == pytest.approx(1.0)
    assert by_key["case_b", "spleen"]["dsc"] == "1.000000"
    assert by_key["case_b", "pancreas"]["nsd"] == "1.000000"  # absent in both
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 2
    liver = summary["classes"]["liver"]
    assert liver["dsc_mean"] == pytest.approx(0.75)
    assert liver["dsc_std"] == pytest.approx(0.25)
    assert liver["nsd_tolerance_mm"] == 5.0
    dsc_means = [c["dsc_mean"] for c in summary["classes"].values()]
    assert summary["mean"]["dsc"] == pytest.approx(np.mean(dsc_means))
    assert summary["cases"]["case_a"]["dsc"] == 1.0
    printed = capsys.readouterr().out
    assert "liver" in printed and "mean" in printed and "2 case(s)" in printed


def test_cli_classes_and_workers(folders, tmp_path):
    pred, gt = folders
    out = tmp_path / "out"
    assert main([str(pred), str(gt), "--out", str(out), "--classes", "liver", "3",
                 "--workers", "2", "--quiet"]) == 0
    rows = read_rows(out)
    assert [(r["case"], r["class_name"]) for r in rows] == [
        ("case_a", "liver"), ("case_a", "spleen"), ("case_b", "liver"), ("case_b", "spleen")]


def test_single_files(folders, tmp_path):
    pred, gt = folders
    rows, summary = evaluate_folders(pred / "case_b.nii.gz", gt / "case_b.nii.gz", FLARE22,
                                     progress=False)
    assert summary["num_cases"] == 1 and {r["case"] for r in rows} == {"case_b"}


def test_flare_layout_labels_tr_and_image_named_predictions(tmp_path):
    gt, pred = make_case(0)
    write_labels(tmp_path / "dataset" / "labelsTr" / "FLARE22_Tr_0001.nii.gz", gt)
    write_labels(tmp_path / "pred" / "FLARE22_Tr_0001_0000.nii.gz", pred)
    pairs = match_cases(tmp_path / "pred", tmp_path / "dataset")
    assert [(case, p.name) for case, p, _ in pairs] == [("FLARE22_Tr_0001",
                                                          "FLARE22_Tr_0001_0000.nii.gz")]


def test_missing_prediction_names_the_case(folders):
    pred, gt = folders
    (pred / "case_b.nii.gz").unlink()
    with pytest.raises(InputError, match=r"no prediction for 1 of 2 cases \(first: case_b"):
        match_cases(pred, gt)


def test_no_cases_is_input_error(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    assert main([str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    assert "no .nii/.nii.gz ground-truth files" in capsys.readouterr().err


def test_file_and_folder_mix_is_input_error(folders):
    pred, gt = folders
    with pytest.raises(InputError, match="is a file while the other input is a folder"):
        match_cases(pred / "case_a.nii.gz", gt)


@pytest.mark.parametrize("workers", [1, 2])
def test_prediction_on_another_grid_is_input_error(folders, workers):
    pred, gt = folders
    _, labels = make_case(0)
    write_labels(pred / "case_a.nii.gz", labels, np.diag([-1.5, -1.5, 3.0, 1.0]))
    with pytest.raises(InputError, match=r"case_a\.nii\.gz: label affine differs"):
        evaluate_folders(pred, gt, FLARE22, workers=workers, progress=False)


def test_prediction_with_wrong_shape_exits_2(folders, capsys):
    pred, gt = folders
    write_labels(pred / "case_b.nii.gz", np.zeros((16, 16, 9), np.uint8))
    assert main([str(pred), str(gt), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "case_b.nii.gz: label shape (16, 16, 9) differs" in err and "Fix:" in err


def test_tumor_ids_need_flare23(folders, capsys):
    pred, gt = folders
    labels, _ = make_case(0)
    labels[0, 0, 0] = 14
    write_labels(gt / "case_a.nii.gz", labels)
    assert main([str(pred), str(gt), "--quiet"]) == 2
    assert "not in schema flare22" in capsys.readouterr().err
    assert main([str(pred), str(gt), "--schema", "flare23", "--quiet"]) == 0


def test_real_case_single_files(real_data, tmp_path, capsys):
    case = real_data / "example_ct_sm30"
    out = tmp_path / "eval"
    assert main([str(case / "label_flare_fast.nii.gz"), str(case / "label_flare.nii.gz"),
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"]["liver"]["dsc_mean"] > 0.9
    assert 0.85 < summary["mean"]["dsc"] < 0.99
