"""Per-case report: organ statistics, uncertainty ranking, stage timing, JSON round trip,
atomic writes and the uncertainty map in the input's own geometry."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest

from slicevos.inference.pipeline import VolumePipeline
from slicevos.inference.reporting.report import (
    CaseReport,
    StageTimer,
    memory_summary,
    organ_statistics,
    read_report,
    save_uncertainty_map,
    slice_class_areas,
    uncertainty_ranking,
    write_report,
)
from slicevos.io.labels import FLARE22
from slicevos.io.volume import Geometry, Volume
from slicevos.metrics.efficiency import EfficiencyMeter


def test_organ_volume_of_a_hand_made_cube():
    labels = np.zeros((20, 16, 16), np.uint8)
    labels[5:9, 2:7, 3:9] = 1      # 4 x 5 x 6 = 120 voxels of liver
    labels[12, 0, 0] = 13          # one voxel of left kidney
    stats = organ_statistics(labels, (2.5, 0.8, 0.5), FLARE22)  # 1 mm^3 per voxel
    assert set(stats) == {"liver", "left_kidney"}
    assert stats["liver"] == {"id": 1, "voxels": 120, "volume_ml": pytest.approx(0.12),
                              "slice_range": [5, 8], "num_slices": 4}
    assert stats["left_kidney"]["slice_range"] == [12, 12]
    assert stats["left_kidney"]["volume_ml"] == pytest.approx(0.001)
    labels[0, 0, 0] = 99
    with pytest.raises(ValueError, match="99"):
        organ_statistics(labels, (1, 1, 1), FLARE22)


def test_slice_areas_in_chunks_match_a_direct_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 256, (37, 9, 7), dtype=np.uint8)  # 37: not a multiple of a chunk
    areas = slice_class_areas(labels)
    expected = np.stack([np.bincount(s.ravel(), minlength=256) for s in labels])
    np.testing.assert_array_equal(areas, expected)


def test_ranking_suppresses_neighbours_and_ignores_nan():
    u = np.full(30, 0.1)
    u[10:13] = (0.9, 1.0, 0.95)  # one bad region: only its peak counts
    u[20] = 0.5
    u[25] = 0.4
    u[2] = np.nan
    u[0] = 0.3
    assert uncertainty_ranking(u, k=5, min_separation=3) == [11, 20, 25, 0, 4]
    assert uncertainty_ranking(u, k=3, min_separation=0) == [11, 12, 10]
    assert uncertainty_ranking(np.full(8, np.nan)) == []
    assert uncertainty_ranking([0.2, 0.1], k=5, min_separation=3) == [0]


def test_ranking_invariants_on_random_values():
    rng = np.random.default_rng(1)
    for _ in range(20):
        u = rng.random(60)
        u[rng.random(60) < 0.3] = np.nan
        chosen = uncertainty_ranking(u, k=5, min_separation=2)
        assert all(np.isfinite(u[chosen]))
        assert list(u[chosen]) == sorted(u[chosen], reverse=True)
        assert all(abs(a - b) > 2 for i, a in enumerate(chosen) for b in chosen[i + 1:])
        for z in np.flatnonzero(np.isfinite(u)):
            if z in chosen:
                continue
            blocker = [c for c in chosen if abs(c - z) <= 2 and u[c] >= u[z]]
            assert blocker or (len(chosen) == 5 and u[z] <= u[chosen].min())


def test_stage_timer_accumulates_per_stage():
    timer = StageTimer(device="cpu")
    with timer("reference"):
        time.sleep(0.02)
    with timer("propagation"):
        time.sleep(0.01)
    with pytest.raises(RuntimeError), timer("reference"):
        time.sleep(0.02)
        raise RuntimeError("stage failed")
    assert list(timer.seconds) == ["reference", "propagation"]
    assert timer.seconds["reference"] >= 0.04
    assert 0.01 <= timer.seconds["propagation"] < timer.seconds["reference"]
    assert timer.total == pytest.approx(sum(timer.seconds.values()))


def _report(depth: int = 30) -> CaseReport:
    labels = np.zeros((depth, 8, 8), np.uint8)
    labels[3:9, 2:5, 2:5] = 3
    report = CaseReport(
        input_path="in/case.nii.gz", output_path="out/case.nii.gz", shape=(depth, 8, 8),
        spacing_mm=(2.5, 0.8, 0.8), schema="flare22", mode="semi-automatic",
        key_slices=[4, 20], key_source="user", processed_z_range=(2, 27),
        timing_s={"load": 0.5, "propagation": 2.25},
        organs=organ_statistics(labels, (2.5, 0.8, 0.8), FLARE22),
        checkpoints={"propagation": "ckpt/prop.pt"}, config={"tta": False, "top_k": 20},
    )
    u = np.linspace(0, 1, depth)
    u[:2] = np.nan
    report.set_uncertainty(u)
    return report


def test_report_json_round_trip_and_no_temporary_files(tmp_path):
    report = _report()
    with EfficiencyMeter(sample_interval_s=0.05) as meter:
        np.ones(1000).sum()
    report.memory_mb = memory_summary(meter)
    path = write_report(tmp_path / "case.report.json", report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.report.json"]
    raw = json.loads(path.read_text())
    assert raw["per_slice_uncertainty"][:2] == [None, None]  # NaN -> null (valid JSON)
    assert raw["slices_to_correct"] == [29, 25, 21, 17, 13]
    assert raw["memory_mb"]["peak_rss_mb"] > 0
    assert read_report(path) == report


def test_failed_write_leaves_nothing(tmp_path):
    report = _report()
    report.config = {"bad": object()}
    with pytest.raises(TypeError):
        write_report(tmp_path / "r.json", report)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("change, match", [
    ({"mode": "manual"}, "mode"), ({"key_slices": [30]}, "key slices"),
    ({"processed_z_range": (5, 2)}, "z range"), ({"per_slice_uncertainty": [0.1]}, "uncertaint"),
])
def test_report_rejects_inconsistent_fields(change, match):
    fields = {**_report().to_dict(), **change}
    with pytest.raises(ValueError, match=match):
        CaseReport.from_dict(fields)


def test_uncertainty_map_in_the_input_geometry(tmp_path):
    depth, rows, cols = 6, 5, 4
    # file axes (L, P, S) with the canonical grid transposed: a non-trivial orientation
    affine = np.diag([-0.7, -0.8, 2.5, 1.0])
    geometry = Geometry(affine, (cols, rows, depth))
    assert geometry.canonical_shape == (depth, rows, cols)
    rng = np.random.default_rng(2)
    u = rng.random((depth, rows, cols)).astype(np.float32)
    u[0] = np.nan
    path = save_uncertainty_map(tmp_path / "u.nii.gz", u, geometry)
    img = nib.load(str(path))
    assert img.shape == geometry.shape and np.allclose(img.affine, affine)
    back = geometry.to_canonical(np.asarray(img.dataobj, dtype=np.float64))
    np.testing.assert_allclose(back[1:], u[1:], atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(back[0], 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.nii.gz"]
    as_uint8 = save_uncertainty_map(tmp_path / "v.nii", np.full(u.shape, 51, np.uint8), geometry)
    np.testing.assert_allclose(np.asarray(nib.load(str(as_uint8)).dataobj), 0.2, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_uncertainty_map(tmp_path / "w.nii.gz", u * 2 + 1, geometry)
    assert not (tmp_path / "w.nii.gz").exists()


def test_stage_timer_synchronises_a_cuda_device(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(str(device)))
    with StageTimer(device=torch.device("cuda", 0))("propagation"):
        assert calls == ["cuda:0"]  # queued work of earlier stages is not charged here
    assert calls == ["cuda:0", "cuda:0"]
    with StageTimer(device="cpu")("propagation"):
        pass
    assert len(calls) == 2


def test_drawn_keys_rank_slices_by_the_check_next_rule_not_the_far_end() -> None:
    """A liver tube on slices 0-59 drawn on slice 5 only: the report's first slice to check
    splits the long undrawn run (as bisection would), where the old per-slice uncertainty
    ranking, which grows with distance from the key, put the far end first."""
    depth, size = 60, 48
    hu = np.full((depth, size, size), -100.0, np.float32)
    truth = np.zeros((depth, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - 24) ** 2 + (xx - 24) ** 2 <= 64
    hu[:, disk], truth[:, disk] = 120.0, FLARE22.id_of("liver")
    hu += np.random.default_rng(0).normal(0, 5, hu.shape).astype(np.float32)
    volume = Volume(hu, Geometry(np.diag([-1.0, -1.0, 2.0, 1.0]), (size, size, depth)))
    result = VolumePipeline.from_checkpoints(None, schema=FLARE22).run(volume, {5: truth[5]})
    assert result.slices_to_check and 5 not in result.slices_to_check
    assert 20 <= result.slices_to_check[0] <= 45, result.slices_to_check
    assert uncertainty_ranking(result.slice_uncertainty)[0] > 45  # the old rule: the far end
    report = _report(depth)
    report.set_uncertainty(result.slice_uncertainty, ranked=result.slices_to_check)
    assert report.slices_to_correct == result.slices_to_check[:5]

