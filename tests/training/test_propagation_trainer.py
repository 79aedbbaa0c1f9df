"""STCN training on phantom clips in both object modes: the shared trainer drives it, the loss
goes down, the checkpoint resumes exactly; joint mode takes its classes from the cache schema
and refuses class-agnostic caches and out-of-range label ids."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slicevos.config import load_config
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.errors import InputError
from slicevos.inference.engines.stcn.engine import Propagator, load_propagation_net
from slicevos.io.checkpoint import load_checkpoint
from slicevos.training.propagation import PropagationConfig, PropagationTrainer, mask_padding_slots

TINY = Path(__file__).resolve().parents[2] / "configs" / "propagation" / "tiny.yaml"
MODES = ("per_object", "joint")
FLARE22_CLASSES = 14


def config_for(cache_dir: Path, out: Path, *assignments: str) -> PropagationConfig:
    return load_config(TINY, PropagationConfig, assignments=[
        f"data.cache_dir={cache_dir}", f"train.out_dir={out}", "data.val_cases=[phantom_0002]",
        *assignments])


def test_padding_slots_are_masked():
    logits = torch.zeros(1, 2, 3, 4, 4)
    out = mask_padding_slots(logits, torch.tensor([[True, False]]))
    assert (out[:, :, 2] < -1e3).all() and (out[:, :, :2] == 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_propagation_training_lowers_the_loss(cache_dir, tmp_path, mode):
    trainer = PropagationTrainer(config_for(cache_dir, tmp_path / "run", "train.iterations=60",
                                            "train.val_every=60", "train.log_every=10",
                                            f"model.object_mode={mode}"))
    metrics = trainer.fit()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train/loss")]) for r in rows[1:]
              if r.split(",")[header.index("train/loss")]]
    assert losses[-1] < 0.8 * losses[0]
    assert 0.0 <= metrics["iou_mean"] <= 1.0
    payload = load_checkpoint(tmp_path / "run" / "last.pt", kind="propagation")
    assert len(payload["extra"]["windows"]) == 3
    classes = FLARE22_CLASSES if mode == "joint" else 2  # joint: the cache's schema decides
    assert trainer.module.num_classes == payload["extra"]["num_classes"] == classes


def test_joint_checkpoint_drives_a_session(cache_dir, tmp_path):
    """A joint checkpoint rebuilds with the schema's classes and propagates FLARE labels."""
    PropagationTrainer(config_for(cache_dir, tmp_path / "run", "train.iterations=2",
                                  "train.checkpoint_every=2", "model.object_mode=joint")).fit()
    net, windows = load_propagation_net(tmp_path / "run" / "last.pt")
    assert net.joint and net.num_classes == FLARE22_CLASSES and len(windows) == 3
    image = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), np.uint8)
    key = np.zeros((32, 32), np.uint8)
    key[8:20, 8:20] = 13  # left kidney, the highest FLARE22 id
    session = Propagator(net, feature_dtype=torch.float32).start(image)
    session.add_mask(1, key)
    labels = session.run()
    assert labels.shape == (4, 32, 32) and labels.max() < FLARE22_CLASSES


@pytest.mark.parametrize("mode", MODES)
def test_propagation_resume_is_exact(cache_dir, tmp_path, mode):
    common = ("train.checkpoint_every=2", "train.val_every=100", "train.log_every=1",
              f"model.object_mode={mode}")
    PropagationTrainer(config_for(cache_dir, tmp_path / "full", "train.iterations=4", *common)).fit()
    PropagationTrainer(config_for(cache_dir, tmp_path / "cut", "train.iterations=2", *common)).fit()
    PropagationTrainer(config_for(cache_dir, tmp_path / "cut", "train.iterations=4", *common),
                       resume=True).fit()
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_joint_mode_refuses_class_agnostic_caches(cache_dir, tmp_path):
    prepare_cache(cache_dir.parent / "ds", tmp_path / "objects",
                  PrepareConfig(schema="objects", workers=1), progress=False)
    with pytest.raises(InputError, match="schema 'objects' is class-agnostic"):
        PropagationTrainer(config_for(tmp_path / "objects", tmp_path / "run",
                                      "model.object_mode=joint"))
    PropagationTrainer(config_for(tmp_path / "objects", tmp_path / "run"))  # per_object: fine


def test_joint_mode_refuses_label_ids_beyond_the_schema(cache_dir, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    for case_dir in (copy / "cases").iterdir():
        labels = np.load(case_dir / "labels.npy")
        np.save(case_dir / "labels.npy", np.where(labels == 1, 20, labels).astype(np.uint8))
    trainer = PropagationTrainer(config_for(copy, tmp_path / "run", "train.iterations=1",
                                            "model.object_mode=joint", "data.max_objects=13"))
    with pytest.raises(InputError, match=r"label id 20, outside the 14 classes.*cache"):
        trainer.fit()


def test_train_propagation_cli(cache_dir, tmp_path):
    from slicevos.cli.train_propagation import main

    out = tmp_path / "cli"
    assert main(["--config", str(TINY), "--cache", str(cache_dir), "--out", str(out),
                 "--iterations", "2", "--set", "train.checkpoint_every=2",
                 "--set", "data.val_cases=[phantom_0002]"]) == 0
    assert (out / "last.pt").is_file() and (out / "config.yaml").is_file()
    assert main(["--config", str(TINY), "--cache", str(cache_dir), "--out", str(out),
                 "--iterations", "4", "--resume", "--set", "train.checkpoint_every=2",
                 "--set", "data.val_cases=[phantom_0002]"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 4


@pytest.mark.parametrize("name", ["paper", "fast_cpu", "tiny"])
def test_shipped_configs_build(name):
    from slicevos.models.propagation import PropagationNet

    config = load_config(TINY.with_name(f"{name}.yaml"), PropagationConfig)
    params_m = sum(p.numel() for p in PropagationNet(config.model).parameters()) / 1e6
    expected = {"paper": (40, 45), "fast_cpu": (9, 12), "tiny": (0.1, 1.5)}[name]
    assert expected[0] < params_m < expected[1], params_m
