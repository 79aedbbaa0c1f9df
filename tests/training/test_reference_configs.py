"""The shipped reference configs load, and build the networks they describe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slicevos.config import load_config
from slicevos.io.labels import FLARE23
from slicevos.models.reference.cps import build_cps_pair
from slicevos.training.reference import ReferenceConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "reference").glob("*.yaml"))


def test_the_three_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"paper", "fast_cpu", "tiny"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_pair(path):
    config = load_config(path, ReferenceConfig)
    pair = build_cps_pair(config.model, FLARE23.num_classes, 3)
    params_m = sum(p.numel() for p in pair.parameters()) / 1e6
    if path.stem == "paper":
        assert 110 < params_m < 125  # TransUNet ~106 M + DeepLabV3+ EfficientNet-B3 ~12 M
        assert config.train.iterations == 50_000 and config.train.optim.milestones == (40_000, 45_000)
        assert config.data.batch_labeled == 2 and config.data.batch_unlabeled == 2
    if path.stem == "tiny":
        assert params_m < 1.0
        size = config.data.crop_size
        with torch.no_grad():
            a, b = pair.eval()(torch.rand(2, 3, *size), torch.tensor([0.0, 1.0]))
        assert a.shape == b.shape == (2, FLARE23.num_classes, *size)


def test_relative_augment_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    from slicevos.cli.training_args import resolve_relative_augment

    paper = next(p for p in CONFIGS if p.stem == "paper")
    monkeypatch.chdir(tmp_path)  # somewhere else entirely
    config = resolve_relative_augment(load_config(paper, ReferenceConfig), paper)
    assert Path(config.data.augment).is_file()
    assert Path(config.data.augment).name == "default.yaml"
