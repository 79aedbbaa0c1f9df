"""slicevos-infer end to end on phantoms with tiny checkpoints: both modes, geometry round trip
for RAS and LPS inputs, exact key slices, batch resume after a kill, and the bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from slicevos.cli.infer_volume import main as infer
from slicevos.io.nifti import load_labels

pytestmark = pytest.mark.slow


def _image(models) -> Path:
    return sorted((models.dataset / "imagesTr").glob("*_0000.nii.gz"))[0]


def _truth(models) -> Path:
    return models.dataset / "labelsTr" / _image(models).name.replace("_0000.nii", ".nii")


def _ckpt_args(models) -> list[str]:
    return ["--reference", str(models.reference), "--propagation", str(models.propagation),
            "--device", "cpu", "--quiet", "--set", "key_stride=2", "--set", "min_key_area=5"]


def test_automatic_mode_writes_labels_preview_and_report(tiny_models, tmp_path):
    out = tmp_path / "seg.nii.gz"
    assert infer([str(_image(tiny_models)), str(out), *_ckpt_args(tiny_models),
                  "--preview", "--report", "--uncertainty-map"]) == 0
    image, seg = nib.load(_image(tiny_models)), nib.load(out)
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
    assert seg.get_data_dtype() == np.uint8
    assert json.loads((tmp_path / "seg.json").read_text())  # label map sidecar
    report = json.loads((tmp_path / "seg_report.json").read_text())
    assert report["mode"] == "automatic" and report["key_source"] == "reference"
    assert set(report["timing_s"]) >= {"load", "window", "reference", "propagation"}
    assert len(report["per_slice_uncertainty"]) == image.shape[2]
    assert report["memory_mb"]["peak_rss_mb"] > 0
    assert (tmp_path / "seg_preview.png").stat().st_size > 1000
    assert nib.load(tmp_path / "seg_uncertainty.nii.gz").shape == image.shape


def test_semi_automatic_mode_keeps_the_drawn_slices_exactly(tiny_models, tmp_path):
    truth_img = nib.load(_truth(tiny_models))
    truth = np.asarray(truth_img.dataobj).astype(np.uint8)
    drawn = np.zeros_like(truth)
    keys = [4, 11]  # file slice indices (axis 2 of the RAS phantom file)
    drawn[..., keys] = truth[..., keys]
    key_file = tmp_path / "drawn.nii.gz"
    nib.save(nib.Nifti1Image(drawn, truth_img.affine), key_file)
    out = tmp_path / "semi.nii.gz"
    assert infer([str(_image(tiny_models)), str(out), "--propagation",
                  str(tiny_models.propagation), "--keys", str(key_file), "--schema", "flare22",
                  "--quiet", "--report"]) == 0
    seg = np.asarray(nib.load(out).dataobj)
    for k in keys:
        assert np.array_equal(seg[..., k], truth[..., k])
    assert json.loads((tmp_path / "semi_report.json").read_text())["key_slices"] == keys
    # --key-slices picks the same slices from the fully drawn file
    out2 = tmp_path / "semi2.nii.gz"
    assert infer([str(_image(tiny_models)), str(out2), "--propagation",
                  str(tiny_models.propagation), "--keys", str(_truth(tiny_models)),
                  "--key-slices", "4,11", "--schema", "flare22", "--quiet"]) == 0
    assert np.array_equal(np.asarray(nib.load(out2).dataobj), seg)


def _mirror_xy(src: Path, dst: Path) -> None:
    """The same scan with x and y flipped in the array and the affine (RAS <-> LPS)."""
    img = nib.load(src)
    data = np.asarray(img.dataobj)[::-1, ::-1]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [data.shape[0] - 1, data.shape[1] - 1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip), dst)


def test_output_geometry_follows_ras_and_lps_inputs(tiny_models, tmp_path):
    mirrored = tmp_path / "mirrored_0000.nii.gz"
    _mirror_xy(_image(tiny_models), mirrored)
    codes = {nib.aff2axcodes(nib.load(p).affine) for p in (_image(tiny_models), mirrored)}
    assert codes == {("R", "A", "S"), ("L", "P", "S")}
    results = {}
    for name, image in (("original", _image(tiny_models)), ("mirrored", mirrored)):
        out = tmp_path / f"{name}.nii.gz"
        assert infer([str(image), str(out), *_ckpt_args(tiny_models)]) == 0
        seg, src = nib.load(out), nib.load(image)
        assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
        results[name] = load_labels(out)[0]  # canonical grid
    assert np.array_equal(results["original"], results["mirrored"])


def test_batch_mode_resumes_after_a_kill(tiny_models, tmp_path):
    batch = tmp_path / "in"
    batch.mkdir()
    for i in range(3):
        (batch / f"case{i}_0000.nii.gz").symlink_to(_image(tiny_models))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slicevos.cli.infer_volume", str(batch), str(out),
           *_ckpt_args(tiny_models), "--report"]
    env = {**os.environ, "SLICEVOS_TEST_EXIT_AFTER": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert killed.returncode == 3, killed.stderr
    assert (out / "case0.nii.gz").exists() and not (out / "case1.nii.gz").exists()
    first_mtime = (out / "case0.nii.gz").stat().st_mtime_ns
    env.pop("SLICEVOS_TEST_EXIT_AFTER")
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "case0" in rerun.stderr and "skipped" in rerun.stderr
    assert (out / "case0.nii.gz").stat().st_mtime_ns == first_mtime
    assert all((out / f"case{i}.nii.gz").exists() for i in range(3))
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*"))


def _expect_error(capsys, argv: list[str], *fragments: str) -> None:
    assert infer(argv) == 2
    message = capsys.readouterr().err
    assert message.startswith("error:") and message.count("\n") == 1, message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_checkpoints_fail_before_any_work(tiny_models, tmp_path, capsys):
    image, out = str(_image(tiny_models)), tmp_path / "never.nii.gz"
    ref, prop = str(tiny_models.reference), str(tiny_models.propagation)
    _expect_error(capsys, [image, str(out), "--reference", ref, "--propagation",
                           str(tmp_path / "missing.pt")], "missing.pt", "not found")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(prop).read_bytes()[:5000])
    _expect_error(capsys, [image, str(out), "--reference", ref, "--propagation",
                           str(truncated)], "truncated.pt", "cannot read")
    _expect_error(capsys, [image, str(out), "--reference", prop, "--propagation", prop],
                  "kind", "reference_cps")
    payload = torch.load(ref, weights_only=True)
    payload["config"]["schema"] = "flare23"  # 15 classes: the heads no longer fit
    wrong = tmp_path / "wrong_classes.pt"
    torch.save(payload, wrong)
    _expect_error(capsys, [image, str(out), "--reference", str(wrong), "--propagation", prop],
                  "wrong_classes.pt", "do not fit")
    assert not out.exists()


def test_bad_key_files(tiny_models, tmp_path, capsys):
    image = str(_image(tiny_models))
    base = [image, str(tmp_path / "o.nii.gz"), "--propagation", str(tiny_models.propagation),
            "--schema", "flare22"]
    truth = nib.load(_truth(tiny_models))
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(truth.shape, np.uint8), truth.affine), empty)
    _expect_error(capsys, [*base, "--keys", str(empty)], "empty.nii.gz", "no drawn slice")
    moved = tmp_path / "moved.nii.gz"
    shifted = truth.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(truth.dataobj), shifted), moved)
    _expect_error(capsys, [*base, "--keys", str(moved)], "moved.nii.gz", "affine")
    _expect_error(capsys, [*base, "--keys", str(_truth(tiny_models)), "--key-slices", "3,99"],
                  "outside")
    _expect_error(capsys, [*base, "--key-slices", "3"], "--keys")


def test_demo_runs(tmp_path):
    out = tmp_path / "demo"
    assert infer(["--demo", str(out), "--device", "cpu", "--quiet"]) == 0
    assert (out / "segmentation.nii.gz").exists()
    assert (out / "segmentation_preview.png").exists()
    report = json.loads((out / "segmentation_report.json").read_text())
    assert report["organs"], "the demo model found no organ"
