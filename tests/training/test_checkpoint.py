"""Checkpoint files, RNG states and seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from slicevos.errors import InputError
from slicevos.training.checkpoint import (
    config_differences,
    load_checkpoint,
    make_payload,
    save_checkpoint,
)
from slicevos.training.seeding import get_rng_state, preserve_rng, seed_everything, set_rng_state


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()  # noqa: NPY002


def payload(**fields):
    model = torch.nn.Linear(3, 2).state_dict()
    return make_payload("toy", {"width": 8, "milestones": [6, 9]}, model, 5,
                        rng=get_rng_state(), **fields)


def test_saved_checkpoint_loads_with_weights_only_and_keeps_every_field(tmp_path):
    saved = payload(metrics={"dice": 0.5}, best={"metric": "dice", "value": 0.5, "step": 4})
    save_checkpoint(tmp_path / "last.pt", saved)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind

    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    loaded = load_checkpoint(tmp_path / "last.pt", kind="toy")
    for got in (raw, loaded):
        assert got["format"] == "slicevos" and got["version"] == 1 and got["step"] == 5
        assert got["config"] == {"width": 8, "milestones": [6, 9]}
        assert torch.equal(got["model"]["weight"], saved["model"]["weight"])
        assert got["best"] == saved["best"]


def test_rng_state_survives_a_checkpoint_round_trip(tmp_path):
    seed_everything(3)
    save_checkpoint(tmp_path / "c.pt", payload())
    expected = draws()
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert draws() == expected


def test_preserve_rng_leaves_the_streams_where_they_were():
    seed_everything(1)
    expected = draws()
    seed_everything(1)
    with preserve_rng():
        draws()
    assert draws() == expected


def test_seeds_differ_by_rank_and_repeat_by_seed():
    seed_everything(7, rank=0)
    a = draws()
    seed_everything(7, rank=1)
    b = draws()
    seed_everything(7, rank=0)
    assert draws() == a
    assert a[0] != b[0] and a[1] != b[1] and a[2] != b[2]


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", payload())
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (whatever pickle raises for a lambda)
        save_checkpoint(path, payload(extra={"bad": lambda: 0}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"nope\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_an_input_error(tmp_path, damage):
    path = save_checkpoint(tmp_path / "last.pt", payload())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(InputError, match=r"last\.pt: cannot read the checkpoint .*Fix: the file is"):
        load_checkpoint(path)


def test_foreign_or_newer_or_other_kind_is_an_input_error(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not a slicevos checkpoint \\(format None"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "new.pt", {**payload(), "version": 99})
    with pytest.raises(InputError, match="version 99 is newer"):
        load_checkpoint(tmp_path / "new.pt")
    with pytest.raises(InputError, match="kind is 'toy', expected 'propagation'"):
        load_checkpoint(save_checkpoint(tmp_path / "k.pt", payload()), kind="propagation")


def test_config_differences_lists_dotted_keys_and_honours_ignore():
    old = {"model": {"name": "a", "depth": 2}, "train": {"iterations": 10, "lr": 0.1}}
    new = {"model": {"name": "a", "depth": 3}, "train": {"iterations": 20, "lr": 0.1}, "x": 1}
    assert config_differences(old, new) == [
        "model.depth: 2 -> 3", "train.iterations: 10 -> 20", "x: '<missing>' -> 1"]
    assert config_differences(old, new, frozenset({"train.iterations", "x"})) == [
        "model.depth: 2 -> 3"]
