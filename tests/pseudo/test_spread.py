"""The quality-spread pool: conditions, hidden truth, tumor load, and the benchmark's metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from slicevos.benchmarks.pseudo_pools import pool_spearman, pool_table
from slicevos.cli.benchmark_pseudo import acceptance, kendall, parse_member_sets
from slicevos.data.dataset_folder import discover_cases
from slicevos.errors import InputError
from slicevos.io.labels import FLARE22
from slicevos.io.nifti import load_labels
from slicevos.phantom import DEFAULT_ORGAN_HU, TUMOR_ID, make_phantom
from slicevos.pseudo.filtering import FilterConfig
from slicevos.pseudo.spread import (
    SpreadConfig,
    condition_config,
    load_spread_config,
    plan_pool,
    pool_conditions,
    write_pool,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = SpreadConfig(base={"shape": [6, 32, 32]}, seeds_per_condition=1, labeled=1, conditions={
    "clean": {}, "flat": {"contrast": 0.0},
    "tumors": {"tumors": {"max_tumors": 4, "tumor_radius_mm": [20.0, 30.0]}}})


def test_conditions_override_the_base():
    flat = condition_config(TINY, "flat")
    assert flat.shape == (6, 32, 32)
    assert set(flat.organ_hu.values()) == {45.0} and set(flat.organ_hu) == set(DEFAULT_ORGAN_HU)
    tumors = condition_config(TINY, "tumors")
    assert tumors.with_tumors and tumors.tumor_probability == 1.0 and tumors.max_tumors == 4
    cases = plan_pool(TINY)
    assert [c.case_id for c in cases] == ["clean_0", "flat_0", "tumors_0"]
    assert len({c.seed for c in cases}) == 3
    with pytest.raises(InputError, match="unknown keys"):
        condition_config(SpreadConfig(conditions={"x": {"nosie_hu": 3}}), "x")


def test_pool_hides_the_truth_from_the_dataset_readers(tmp_path):
    pool = write_pool(TINY, tmp_path / "pool", progress=False)
    cases = discover_cases(pool, FLARE22)
    assert [(c.case_id, c.split) for c in cases] == [
        ("phantom_0000", "labeled"), ("clean_0", "unlabeled"), ("flat_0", "unlabeled"),
        ("tumors_0", "unlabeled")]
    assert pool_conditions(pool) == {"clean_0": "clean", "flat_0": "flat", "tumors_0": "tumors"}
    seed = plan_pool(TINY)[2].seed
    truth, _ = load_labels(pool / "truth" / "tumors_0.nii.gz")
    with_tumors = make_phantom(seed, condition_config(TINY, "tumors")).labels
    assert (with_tumors == TUMOR_ID).any() and not (truth == TUMOR_ID).any()
    # tumor voxels count as their host organ: the truth is the same anatomy without tumors
    assert np.array_equal(truth[with_tumors != TUMOR_ID], with_tumors[with_tumors != TUMOR_ID])
    assert (truth[with_tumors == TUMOR_ID] > 0).all()
    write_pool(TINY, pool, progress=False)  # a rerun keeps the pool
    other = SpreadConfig(base=TINY.base, conditions={"clean": {}}, seeds_per_condition=1)
    with pytest.raises(InputError, match="another config"):
        write_pool(other, pool, progress=False)


def test_labeled_split_is_a_validation_set_spread_like_the_pool(tmp_path):
    config = SpreadConfig(**{**TINY.__dict__, "labeled": 0, "split": "labeled"})
    folder = write_pool(config, tmp_path / "val", progress=False)
    cases = discover_cases(folder, FLARE22)
    assert [(c.case_id, c.split, c.annotated_class_ids) for c in cases] == [
        (name, "labeled", FLARE22.ids) for name in ("clean_0", "flat_0", "tumors_0")]
    hidden = write_pool(TINY, tmp_path / "pool", progress=False) / "truth" / "flat_0.nii.gz"
    assert np.array_equal(load_labels(folder / "labelsTr" / "flat_0.nii.gz")[0],
                          load_labels(hidden)[0])   # same case, its truth is now the label
    assert not any((folder / "truth").iterdir()) and not any((folder / "unlabeled").iterdir())
    with pytest.raises(InputError, match="split 'test' is unknown"):
        SpreadConfig(split="test")


def test_shipped_pool_configs_load():
    pools = sorted(p.name for p in (ROOT / "configs" / "rounds").glob("pool_*.yaml"))
    assert len(pools) >= 4
    prefixes = set()
    for name in ("spread_pool.yaml", "spread_pool_fast.yaml", "spread_val_fast.yaml",
                 "spread_pool_scarce.yaml", *pools):
        config = load_spread_config(ROOT / "configs" / "rounds" / name)
        assert len(plan_pool(config)) == len(config.conditions) * config.seeds_per_condition
        if name.startswith("pool_"):  # scored together: own prefix, >= 12 cases
            assert config.prefix and config.prefix not in prefixes and len(plan_pool(config)) >= 12
            prefixes.add(config.prefix)
    raw = yaml.safe_load((ROOT / "configs" / "rounds" / "spread_pool.yaml").read_text())
    assert "clean" in raw["conditions"]


def test_acceptance_metrics_and_member_sets():
    rows = [{"consensus": s, "true_dice": d} for s, d in
            [(0.9, 0.8), (0.8, 0.7), (0.7, 0.3), (0.6, 0.6), (0.5, 0.2), (0.4, 0.1)]]
    a = acceptance(rows, FilterConfig(top_fraction=0.5), good=0.5)
    assert (a["accepted"], a["rejected"]) == (3, 3)
    assert a["dice_accepted"] == pytest.approx(0.6) and a["dice_rejected"] == pytest.approx(0.3)
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == pytest.approx(2 / 3)
    assert acceptance(rows, FilterConfig(threshold=0.85), good=0.5)["accepted"] == 1
    assert kendall([1, 2, 3, 4], [1, 3, 2, 4])[0] == pytest.approx(2 / 3)
    assert parse_member_sets(None) == {"all": None}
    assert parse_member_sets(["nets=ckpt0.a,ckpt0.b"]) == {"nets": ["ckpt0.a", "ckpt0.b"]}
    with pytest.raises(InputError, match="NAME=member"):
        parse_member_sets(["ckpt0.a,ckpt0.b"])


def test_pool_table_scores_each_pool_alone():
    # pool p: score = true DSC (rho 1) for variant "good"; "bad" reverses pool q only
    rows = {"set": []}
    for pool, sign in (("p", 1), ("q", -1)):
        for k in range(4):
            rows["set"].append({"pool": pool, "true_dice": k / 4,
                                "scores": {"good": k, "bad": sign * k}})
    pools, rho, counts = pool_spearman(rows, ["good", "bad"], by_pool=True)
    assert pools == ["p", "q"] and counts == {"p": 4, "q": 4}
    assert pool_spearman(rows, ["good"], by_pool=True, order=["q", "x"])[0] == ["q", "p"]
    assert rho["good", "set"] == {"p": 1.0, "q": 1.0}
    assert rho["bad", "set"] == {"p": 1.0, "q": -1.0}
    # together the reversal of q is diluted: one column "all"
    assert list(pool_spearman(rows, ["bad"], by_pool=False)[1]["bad", "set"]) == ["all"]
    text = pool_table(rows, ["good", "bad"]).splitlines()
    assert "p (4)" in text[1] and "q (4)" in text[1] and len(text) == 2 + 2 + 1 + 2
    assert text[3].split()[:4] == ["bad", "set", "1.000", "-1.000"]
    assert text[3].split()[4:] == ["-1.000", "0.000"]          # worst, mean
    assert text[-1].split() == ["bad", "-1.000", "(q", "/", "set)"]
