"""Config YAML: exponent floats without a dot (``1e-4``) are floats, in files and in
``--set`` overrides alike."""

from __future__ import annotations

from slicevos.config import apply_overrides, load_yaml


def test_exponent_floats_parse_as_floats():
    data = load_yaml("lr: 1e-4\nwd: 1.0e-2\nsteps: 10\nname: 1e4x\nhalf: .5\n")
    assert data == {"lr": 1e-4, "wd": 1e-2, "steps": 10, "name": "1e4x", "half": 0.5}
    assert isinstance(data["steps"], int)


def test_overrides_parse_exponent_floats():
    data = apply_overrides({"train": {"optim": {"lr": 0.1}}}, ["train.optim.lr=3e-4"])
    assert data["train"]["optim"]["lr"] == 3e-4
