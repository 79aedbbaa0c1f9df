"""slicevos-benchmark-effort: the simulated annotator on the labelling page's state. Rules and
scores on hand-made inputs; whole runs on a tiny phantom (40 slices of 64x64) and on a real
volume when ../shared/data/real is there."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from slicevos.benchmarks.effort import Case, correct, labeler_for, load_case, propagate, simulate
from slicevos.benchmarks.effort_metrics import (
    Curve,
    dsc_at_keys,
    dsc_auc,
    nos,
    worse_keys,
    write_plot,
)
from slicevos.benchmarks.effort_rules import RULES, Target, bisect, error3d, oracle
from slicevos.cli.benchmark_effort import main
from slicevos.errors import InputError
from slicevos.io import FLARE22, save_labels
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.phantom.dataset import save_ct
from tests.conftest import real_case

ORGANS = (1, 3, 13)  # liver, spleen, left kidney: keeps the runs short


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("effort_phantom")
    phantom = make_phantom(3, PhantomConfig(shape=(40, 64, 64)))
    save_ct(phantom.hu, phantom.geometry, root / "phantom.nii.gz")
    save_labels(phantom.labels, phantom.geometry, root / "labels.nii.gz")
    return root / "phantom.nii.gz", root / "labels.nii.gz"


@pytest.fixture(scope="module")
def case(phantom_files: tuple[Path, Path]) -> Case:
    return load_case(*phantom_files, FLARE22, organs=ORGANS)


# -- rules on hand-made targets -------------------------------------------------------------

def _target(wrong: np.ndarray, keys: set[int], first: int = 0, last: int = 19) -> Target:
    return Target(wrong, first, last, keys)


def test_bisect_splits_the_longest_gap_lower_first_and_skips_keys() -> None:
    wrong = np.zeros((20, 4, 4), bool)
    assert bisect(_target(wrong, {10}))[0] == 5  # gaps [0,10] and [10,19]: tie -> lower
    assert bisect(_target(wrong, {10, 5}))[0] == 14  # [10,19] is now the longest
    assert bisect(_target(wrong, set(), 3, 3))[0] == 3  # one-slice organ, no key yet
    assert bisect(_target(wrong, {3}, 3, 4))[0] == 4  # middle 3 is a key: the free one
    assert bisect(_target(wrong, {3, 4}, 3, 4))[0] is None


def test_oracle_and_error3d_pick_non_key_slices() -> None:
    wrong = np.zeros((20, 8, 8), bool)
    wrong[4:9, :4, :4] = True  # the largest component (80 voxels), centred on z = 6
    wrong[15, :, :] = True  # the slice with the most wrong pixels, 64 of them
    assert oracle(_target(wrong, set()))[0] == 15
    assert oracle(_target(wrong, {15}))[0] in range(4, 9)
    assert error3d(_target(wrong, set()))[0] == 6
    wrong[6, 0, :2] = False  # centre is a key: the component's fullest non-key slice
    assert error3d(_target(wrong, {6}))[0] == 4
    assert oracle(_target(np.zeros_like(wrong), set()))[0] is None
    assert error3d(_target(np.zeros_like(wrong), set()))[0] is None


# -- scores on hand-made curves --------------------------------------------------------------

def test_nos_dsc_at_keys_and_auc_on_a_hand_made_curve() -> None:
    curve = Curve(keys=[1, 2, 3, 4, 4, 5], dsc=[0.5, 0.85, 0.91, 0.93, 0.96, 0.97],
                  nsd=[0.0] * 6)
    assert nos(curve, 0.90) == 3
    assert nos(curve, 0.95) == 4  # reached at a step without a new key: 4 keys
    assert nos(curve, 0.99) is None
    assert dsc_at_keys(curve, 4) == 0.96 and dsc_at_keys(curve, 8) == 0.97
    values = [0.5, 0.85, 0.91, 0.96, 0.97, 0.97]  # keys 1..6, the last carried forward
    expected = sum((a + b) / 2 for a, b in zip(values, values[1:], strict=False)) / 5
    assert dsc_auc(curve) == pytest.approx(expected)
    late = Curve(keys=[3, 4], dsc=[0.8, 0.9], nsd=[0.0, 0.0])  # a range start: 3 keys at once
    assert dsc_at_keys(late, 2) is None
    assert dsc_auc(late) == pytest.approx((0 + 0.4 + 0.85 + 0.9 + 0.9) / 5)  # 0, 0, .8, .9..
    assert worse_keys(curve) == (0, 4)  # 5 steps, 4 of them give a key; none lowers it
    # a key that lowers it by more than 0.005 counts; a step without a key (another organ's
    # key took its pixels) and a fall of 0.005 or less do not
    dips = Curve(keys=[1, 2, 2, 3, 4], dsc=[0.8, 0.7, 0.6, 0.596, 0.7], nsd=[0.0] * 5)
    assert worse_keys(dips) == (1, 3)


# -- runs on the phantom ---------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["oracle", "bisect"])
def test_organ_mode_curves_have_one_value_per_step_and_new_keys(case: Case, rule: str) -> None:
    run = simulate(case, FLARE22, "organ", rule, max_keys=3, stop_dsc=1.1)
    assert set(run.curves) == set(ORGANS)
    for organ, curve in run.curves.items():
        assert len(curve.dsc) == len(curve.nsd) == len(curve.keys) == 4
        assert all(0 <= v <= 1 for v in curve.dsc + curve.nsd)
        picks = [c.z for c in run.corrections if c.organ == organ]
        assert len(picks) == len(set(picks)) == curve.keys[-1]  # every pick a new key
        true_slices = np.flatnonzero((case.truth == organ).any(axis=(1, 2)))
        assert picks[0] == true_slices[(len(true_slices) - 1) // 2]  # the middle start
    steps = [c for c in run.corrections if c.step > 0]
    assert all(c.rule == rule and c.seconds is not None and c.dsc_after is not None
               and c.ahead_seconds is not None for c in steps)
    assert run.start_ahead_seconds is not None


def test_a_cold_run_does_not_wait_for_the_work_ahead(case: Case) -> None:
    run = simulate(case, FLARE22, "organ", "bisect", max_keys=1, work_ahead=False)
    assert run.start_ahead_seconds is None
    assert all(c.ahead_seconds is None for c in run.corrections)


def test_slice_mode_and_range_start(case: Case) -> None:
    run = simulate(case, FLARE22, "slice", "error3d", start="range", max_keys=3, stop_dsc=1.1)
    extent = np.flatnonzero(case.truth.any(axis=(1, 2)))
    assert [(c.z, c.rule) for c in run.corrections][:3] == [
        ((extent[0] + extent[-1]) // 2, "start"),  # then "not here" just past both ends
        (max(extent[0] - 1, 0), "range"), (min(extent[-1] + 1, len(case.truth) - 1), "range")]
    assert all(c.organ is None for c in run.corrections)
    for curve in run.curves.values():
        assert curve.keys == [1, 2, 3, 4]


def test_a_correction_reports_the_pixels_it_changes(case: Case) -> None:
    truth = case.truth
    with labeler_for(case, FLARE22) as labeler:
        correct(labeler, truth, 20, None)
        propagate(labeler)
        for organ in (1, None):  # one organ, then the whole slice, where most is wrong
            labels = labeler.session.labels
            wrong = labels != truth if organ is None else (labels == 1) != (truth == 1)
            z = oracle(Target(wrong, 0, len(truth) - 1, set(labeler.keys)))[0]
            before = labels[z].copy()
            pixels = correct(labeler, truth, z, organ)
            propagate(labeler)
            after = labeler.session.labels[z]
            assert pixels > 0 and int((before != after).sum()) == pixels
            assert np.array_equal(after == 1, truth[z] == 1)


def test_suggested_rule_takes_the_page_suggestion_or_falls_back(case: Case) -> None:
    run = simulate(case, FLARE22, "slice", "suggested", max_keys=2, stop_dsc=1.1)
    steps = [c for c in run.corrections if c.step > 0]
    assert len(steps) == 2 and len({c.z for c in run.corrections}) == 3
    assert all(c.rule == "suggested" for c in steps)


# -- the tool and its files ------------------------------------------------------------------

def test_cli_writes_json_csv_and_plots(phantom_files: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    scan, labels = phantom_files
    out = tmp_path / "out"
    assert main(["--scans", str(scan), "--labels", str(labels), "--organs", "liver", "3",
                 "--rules", "bisect", "oracle", "--max-keys", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all scans (1): organ mode" in printed and "NoS@0.95 per organ" in printed
    assert "ahead s" in printed and "worse" in printed
    with open(out / "effort.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 2 * 3  # modes x rules x organs x steps
    assert {r["organ"] for r in rows} == {"liver", "spleen"}
    data = json.loads((out / "effort.json").read_text())
    assert len(data["runs"]) == 4
    assert all(len(c["dsc"]) == 3 for r in data["runs"] for c in r["curves"].values())
    for run in data["runs"]:  # (worse, keys given): 2 organs get a key at each of 2 steps
        worse, keys = run["summary"]["worse"]
        assert 0 <= worse <= keys == 4
    for mode in ("organ", "slice"):
        assert (out / f"effort_phantom_{mode}.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_is_skipped_with_a_hint_without_matplotlib(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert write_plot([], tmp_path / "effort_x_organ.png", 2) is None
    assert 'pip install -e ".[plot]"' in capsys.readouterr().out
    assert not (tmp_path / "effort_x_organ.png").exists()


def test_bad_input_raises_one_line_input_errors(phantom_files: tuple[Path, Path], case: Case,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    scan, _ = phantom_files
    small = make_phantom(3, PhantomConfig(shape=(30, 64, 64)))
    save_labels(small.labels, small.geometry, tmp_path / "other.nii.gz")
    with pytest.raises(InputError, match="other.nii.gz.*scan .*phantom.nii.gz"):
        load_case(scan, tmp_path / "other.nii.gz", FLARE22)
    assert main(["--scans", str(scan), "--labels", str(tmp_path / "other.nii.gz"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Fix:" in err
    with pytest.raises(InputError, match="unknown rule 'random'.*" + ", ".join(RULES)):
        simulate(case, FLARE22, "organ", "random")
    assert main(["--scans", str(scan), "--labels", str(scan), "--organs", "brain"]) == 2
    assert "'brain' is no organ of schema flare22" in capsys.readouterr().err


# -- a real volume ---------------------------------------------------------------------------

@pytest.mark.real
def test_real_volume_slice_mode(tmp_path: Path) -> None:
    folder = real_case("example_ct_sm30")
    out = tmp_path / "out"
    assert main(["--data", str(folder.parent), "--cases", folder.name, "--modes", "slice",
                 "--rules", "bisect", "--max-keys", "2", "--organs", "liver", "spleen",
                 "left_kidney", "--out", str(out)]) == 0
    run = json.loads((out / "effort.json").read_text())["runs"][0]
    assert run["scan"] == "example_ct_sm30" and set(run["curves"]) == {
        "liver", "spleen", "left_kidney"}
    first = np.mean([c["dsc"][0] for c in run["curves"].values()])
    last = np.mean([c["dsc"][-1] for c in run["curves"].values()])
    assert last > first  # two more keys help
