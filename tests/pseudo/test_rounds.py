"""Pseudo-label rounds: a one-round tiny cycle end to end, resume after a kill, the stop rule."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slicevos.cli.run_rounds import main as rounds_main
from slicevos.data.dataset_folder import discover_cases
from slicevos.errors import InputError
from slicevos.io.checkpoint import load_checkpoint
from slicevos.io.labels import FLARE22
from slicevos.pseudo.filtering import FilterConfig
from slicevos.pseudo.folder import complete_case_dirs, load_members, read_case_record
from slicevos.pseudo.rounds import STEPS, TEST_EXIT_AFTER_STEP_ENV, RoundRunner
from slicevos.pseudo.rounds_config import MemberSettings, RoundsConfig, ValidationSettings

from .tiny_setup import tiny_dataset

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "rounds" / "tiny.yaml"
ITERATIONS = 50  # enough for the tiny pair to find the liver on 48x48 slices


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("rounds") / "ds")


def _args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), "--base-dataset", str(dataset), "--out", str(out), "--set",
            f"train_overrides=[train.iterations={ITERATIONS}, train.val_every={ITERATIONS}, "
            "train.checkpoint_every=25, 'data.crop_size=[48, 48]', model.model_a.params.img_size=48]",
            *extra]


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rounds") / "full"
    assert rounds_main(_args(dataset, out)) == 0
    return out


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "rounds.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_one_round_cycle_end_to_end(finished, dataset):
    (row,) = _table(finished)
    assert row["round"] == "1" and row["labeled"] == "1"  # phantom_0000 is held out
    assert row["candidates"] == "3"
    accepted = int(row["accepted"])
    assert accepted >= 1  # top_fraction 0.5 of 3 cases: 2 unless a case has no organ at all
    state = json.loads((finished / "state.json").read_text())
    results = state["rounds"]["1"]
    assert list(results) == list(STEPS)
    # the members: trained to the end, validation case never trained on
    for path in results["train"]["checkpoints"]:
        payload = load_checkpoint(path)
        assert payload["step"] == ITERATIONS
        assert payload["config"]["data"]["val_cases"] == ["phantom_0000"]
    assert row["checkpoints"] == "round_01/members/seed0/last.pt;round_01/members/seed1/last.pt"
    # generation: the three unlabeled cases, 2 checkpoints x (TransUNet, DeepLabV3+)
    pseudo = complete_case_dirs(finished / "round_01" / "pseudo")
    assert [p.name for p in pseudo] == ["phantom_u0000", "phantom_u0001", "phantom_u0002"]
    assert all(load_members(read_case_record(p)).shape[0] == 4 for p in pseudo)
    assert json.loads((pseudo[0] / "case.json").read_text())["members"] == [
        "ckpt0.a", "ckpt0.b", "ckpt1.a", "ckpt1.b"]
    # the next dataset: base labeled + accepted as labeled, the rest unlabeled
    cases = discover_cases(finished / "round_01" / "next_dataset", FLARE22)
    labeled = sorted(c.case_id for c in cases if c.split == "labeled")
    assert labeled[:2] == ["phantom_0000", "phantom_0001"] and len(labeled) == 2 + accepted
    assert sorted(results["filter"]["accepted_cases"]) == labeled[2:]
    assert len([c for c in cases if c.split == "unlabeled"]) == 3 - accepted
    assert results["validate"]["cases"] == ["phantom_0000"]
    for key in ("val_dice", "val_dice_fused", "mean_consensus"):
        assert 0.0 <= float(row[key]) <= 1.0


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_table(finished, dataset, tmp_path):
    out = tmp_path / "cut"
    env = {**os.environ, TEST_EXIT_AFTER_STEP_ENV: "1:generate"}
    proc = subprocess.run([sys.executable, "-m", "slicevos.cli.run_rounds", *_args(dataset, out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert list(json.loads((out / "state.json").read_text())["rounds"]["1"]) == [
        "cache", "train", "generate"]
    assert not (out / "rounds.csv").exists()
    checkpoint = out / "round_01" / "members" / "seed0" / "last.pt"
    trained_at = checkpoint.stat().st_mtime_ns
    assert rounds_main(_args(dataset, out)) == 0
    assert checkpoint.stat().st_mtime_ns == trained_at  # recorded steps are not redone
    assert (out / "rounds.csv").read_bytes() == (finished / "rounds.csv").read_bytes()


def test_changed_config_is_refused(finished, dataset, capsys):
    assert rounds_main(_args(dataset, finished, "--set", "filter.top_fraction=0.9")) == 2
    assert "filter" in capsys.readouterr().err


def _fake_config(out: Path, rounds: int, min_new: int, **changes) -> RoundsConfig:
    return RoundsConfig(base_dataset="base", reference_config="ref.yaml", out_dir=str(out),
                        filter=FilterConfig(threshold=0.5), rounds=rounds, min_new=min_new,
                        validation=ValidationSettings(cases=("a",)), **changes)


def _fake_steps(accepted: list[int], calls: list[str], dice: list[float] | None = None) -> dict:
    """Steps that return fixed results; ``dice[r]``: validation DSC of round r (0 = baseline)."""
    def step(name):
        def run(ctx):
            calls.append(f"{ctx.round}:{name}")
            return {"cache": {"labeled": 4}, "train": {"checkpoints": [str(ctx.member_dir(0))]},
                    "generate": {"candidates": 10},
                    "filter": {"accepted": accepted[ctx.round - 1], "partial": 0,
                               "mean_consensus": 0.5},
                    "dataset": {}, "validate": {"dice": dice[ctx.round] if dice else 0.7}}[name]
        return run
    return {name: step(name) for name in STEPS}


@pytest.mark.parametrize("action, rows, result_round", [
    ("rollback", 3, 1), ("stop", 3, 2), ("keep", 4, 3)])
def test_round_guard_flags_a_regression_and_protects_the_model(tmp_path, action, rows,
                                                              result_round):
    calls: list[str] = []
    # baseline 0.50, round 1 0.60, round 2 0.55 (a regression), round 3 0.65
    runner = RoundRunner(_fake_config(tmp_path, 3, 1, baseline=True, on_regression=action),
                         _fake_steps([5, 5, 5], calls, dice=[0.50, 0.60, 0.55, 0.65]))
    table = runner.run()
    assert [r["round"] for r in table] == list(range(rows))
    assert calls[:3] == ["0:cache", "0:train", "0:validate"]  # the labeled-only round 0
    assert table[0]["accepted"] == "" and table[0]["regression"] == ""
    assert (table[1]["val_change"], table[1]["regression"]) == ("+0.1000", "no")
    assert (table[2]["val_change"], table[2]["regression"], table[2]["action"]) == (
        "-0.0500", "yes", action)
    on_disk = _table(tmp_path)
    assert [r["action"] for r in on_disk] == [r["action"] for r in table]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["round"] == result_round
    assert result["checkpoints"] == [str(tmp_path / f"round_{result_round:02d}" / "members" / "seed0")]
    if action == "rollback":  # the result is round 1, trained without round 1's additions
        assert result["trained_on"] == "base" and "rolled back to round 1" in runner.stop_reason
    if action == "keep":  # round 3 is compared with round 2, the last kept round
        assert table[3]["val_change"] == "+0.1000"


def test_round_guard_compares_round_one_with_the_baseline(tmp_path):
    runner = RoundRunner(_fake_config(tmp_path, 2, 1, baseline=True),
                         _fake_steps([5, 5], [], dice=[0.6, 0.5, 0.9]))
    table = runner.run()
    assert len(table) == 2 and table[1]["action"] == "rollback"  # the default protects
    assert json.loads((tmp_path / "result.json").read_text())["round"] == 0


def test_rounds_stop_when_too_few_pass_and_more_rounds_continue(tmp_path):
    calls: list[str] = []
    runner = RoundRunner(_fake_config(tmp_path, 3, 2), _fake_steps([5, 1, 9], calls))
    assert [r["accepted"] for r in runner.run()] == [5, 1]
    assert "1 accepted < min_new 2" in runner.stop_reason
    assert len(calls) == 12
    # raising the number of rounds is allowed and continues without redoing anything
    calls.clear()
    rows = RoundRunner(_fake_config(tmp_path, 3, 1), _fake_steps([5, 1, 9], calls)).run()
    assert [r["round"] for r in rows] == [1, 2, 3] and calls == [f"3:{s}" for s in STEPS]
    assert rows[0]["checkpoints"] == "round_01/members/seed0"


def test_config_checks():
    with pytest.raises(InputError, match="fewer than 2"):
        RoundsConfig(base_dataset="b", reference_config="r", filter=FilterConfig(threshold=0.5),
                     members=MemberSettings(seeds=(0,), tta=(), networks=("pair",)),
                     validation=ValidationSettings(cases=("a",)))
    with pytest.raises(InputError, match="exactly one"):
        RoundsConfig(base_dataset="b", reference_config="r", filter=FilterConfig(threshold=0.5))
    with pytest.raises(InputError, match="on_regression"):
        _fake_config(Path("x"), 1, 1, on_regression="ignore")
    assert MemberSettings(seeds=(0,), tta=(), networks=("a", "b")).count == 2


def test_filter_may_change_until_a_filter_step_ran(tmp_path):
    steps = _fake_steps([5], [])
    crash = dict(steps, filter=lambda ctx: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        RoundRunner(_fake_config(tmp_path, 1, 1), crash).run()
    state = json.loads((tmp_path / "state.json").read_text())
    assert list(state["rounds"]["1"]) == ["cache", "train", "generate"]
    changed = dataclasses.replace(_fake_config(tmp_path, 1, 1), filter=FilterConfig(threshold=0.8))
    assert len(RoundRunner(changed, steps).run()) == 1
    with pytest.raises(InputError, match="filter"):
        RoundRunner(_fake_config(tmp_path, 1, 1), steps)


def test_warm_start_members_begin_from_the_previous_round(tmp_path):
    """members.warm_start: round 2's member of seed s starts from round 1's member of seed s
    (train.init_weights); round 1 and runs without the option start from random weights."""
    from slicevos.cli.run_rounds import ModelSteps
    from slicevos.pseudo.rounds import PseudoSteps, RoundContext
    from slicevos.pseudo.rounds_config import load_rounds_config

    def reference(warm: bool, round_number: int, seed: int):
        config = load_rounds_config(CONFIG, [f"out_dir={tmp_path}", f"members.warm_start={warm}"])
        ctx = RoundContext(round_number, tmp_path / f"round_{round_number:02d}", tmp_path, {})
        return ModelSteps(config, PseudoSteps(config))._reference_config(ctx, seed)

    previous = tmp_path / "round_01" / "members" / "seed1" / "last.pt"
    assert reference(True, 2, 1).train.init_weights == str(previous.absolute())
    assert reference(True, 1, 1).train.init_weights is None
    assert reference(False, 2, 1).train.init_weights is None


def test_a_run_started_before_a_config_field_existed_still_resumes(finished, dataset, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished, old, symlinks=True)
    state = json.loads((old / "state.json").read_text())
    del state["config"]["members"]["warm_start"]        # as written before the field existed
    state["config"]["out_dir"] = str(old)
    (old / "state.json").write_text(json.dumps(state))
    assert rounds_main(_args(dataset, old)) == 0
    drop_paths = lambda rows: [{k: v for k, v in r.items() if k != "checkpoints"}  # noqa: E731
                               for r in rows]
    assert drop_paths(_table(old)) == drop_paths(_table(finished))   # nothing was redone


def test_pseudo_weight_weighs_the_pseudo_labeled_cases_from_round_2(tmp_path):
    """members.pseudo_weight: the cases labeled in a round's dataset but not in the base
    dataset get data.case_weights; round 1 and the default weight 1 set none."""
    from slicevos.cli.run_rounds import ModelSteps
    from slicevos.pseudo.rounds import PseudoSteps, RoundContext
    from slicevos.pseudo.rounds_config import load_rounds_config

    def folder(root, labeled):
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True)
        for case in labeled:
            (root / "imagesTr" / f"{case}_0000.nii.gz").touch()
            (root / "labelsTr" / f"{case}.nii.gz").touch()
        return root

    base = folder(tmp_path / "base", ["case_a", "case_b"])
    round_data = folder(tmp_path / "next", ["case_a", "case_b", "u_1", "u_7"])

    def weights(weight: float, round_number: int):
        config = load_rounds_config(CONFIG, [f"out_dir={tmp_path}", f"base_dataset={base}",
                                             f"members.pseudo_weight={weight}"])
        ctx = RoundContext(round_number, tmp_path / f"round_{round_number:02d}", round_data, {})
        return ModelSteps(config, PseudoSteps(config))._reference_config(ctx, 0).data.case_weights

    assert weights(0.5, 2) == {"u_1": 0.5, "u_7": 0.5}
    assert weights(0.5, 1) is None and weights(1.0, 2) is None
    with pytest.raises(InputError, match="pseudo_weight"):
        load_rounds_config(CONFIG, [f"out_dir={tmp_path}", "members.pseudo_weight=0"])


def test_pseudo_share_sets_the_weight_from_the_slice_counts(tmp_path):
    """members.pseudo_share: pseudo-labeled slices get the weight under which they make up that
    share of the labeled draws (here 2 real and 2 pseudo cases of 12 slices each)."""
    from slicevos.cli.run_rounds import ModelSteps
    from slicevos.data.cache_build import PrepareConfig, prepare_cache
    from slicevos.pseudo.rounds import PseudoSteps, RoundContext
    from slicevos.pseudo.rounds_config import load_rounds_config, pseudo_share_weight

    assert pseudo_share_weight(0.5, 40, 10) == pytest.approx(4.0)  # 4 * 10 / (4 * 10 + 40)
    assert pseudo_share_weight(0.2, 12, 48) == pytest.approx(0.0625)
    with pytest.raises(InputError, match="needs labeled and pseudo-labeled training slices"):
        pseudo_share_weight(0.5, 12, 0)
    base = tiny_dataset(tmp_path / "base", n_labeled=2, n_unlabeled=0)
    round_data = tiny_dataset(tmp_path / "next", n_labeled=4, n_unlabeled=0)
    ctx = RoundContext(2, tmp_path / "round_02", round_data, {})
    prepare_cache(round_data, ctx.cache, PrepareConfig(workers=1), progress=False)

    def weights(*assignments: str):
        config = load_rounds_config(CONFIG, [f"out_dir={tmp_path}", f"base_dataset={base}",
                                             "validation.cases=[]",
                                             f"validation.dataset={tmp_path / 'val'}", *assignments])
        return ModelSteps(config, PseudoSteps(config))._reference_config(ctx, 0).data.case_weights

    assert weights("members.pseudo_share=0.75") == {"phantom_0002": 3.0, "phantom_0003": 3.0}
    assert weights("members.pseudo_share=0.5") == {"phantom_0002": 1.0, "phantom_0003": 1.0}
    for bad, message in (("members.pseudo_share=1.0", "pseudo_share = 1.0 is invalid"),
                         ("members.pseudo_weight=2", "are both set")):
        with pytest.raises(InputError, match=message):
            load_rounds_config(CONFIG, [f"out_dir={tmp_path}", "members.pseudo_share=0.5", bad])


@pytest.mark.parametrize("name", ["fast_cpu.yaml", "scarce_cpu.yaml"])
def test_shipped_cpu_rounds_configs_build_their_member_configs(name, tmp_path):
    """The CPU rounds configs load, and their overrides reach the members: CPS weight 0.3 in
    round 1, supervised in round 0."""
    from slicevos.cli.run_rounds import ModelSteps
    from slicevos.pseudo.rounds import PseudoSteps, RoundContext
    from slicevos.pseudo.rounds_config import load_rounds_config

    config = load_rounds_config(ROOT / "configs" / "rounds" / name, [f"out_dir={tmp_path}"])
    steps = ModelSteps(config, PseudoSteps(config))
    member = lambda r: steps._reference_config(  # noqa: E731
        RoundContext(r, tmp_path / f"round_{r:02d}", Path(config.base_dataset), {}), 0)
    assert member(1).cps.mode == "cps" and member(1).cps.weight == pytest.approx(0.3)
    assert member(0).cps.mode == "supervised"
    assert member(1).data.crop_size == (96, 96)
