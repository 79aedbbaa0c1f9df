"""The Trainer base on a real tiny task (tests/training/toy_task.py): learning, logs, best/last
checkpoints, exact resumption and the config check on resume."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from slicevos.config import load_config
from slicevos.errors import InputError, InputWarning
from slicevos.training import OptimConfig, TrainConfig, load_checkpoint

from .toy_task import ToyConfig, ToyTrainer, toy_config


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fit_learns_and_writes_logs_config_and_checkpoints(tmp_path):
    config = toy_config(tmp_path, iterations=24, log_every=2, val_every=8, checkpoint_every=12,
                        progress=True)
    metrics = ToyTrainer(config).fit()

    rows = read_csv(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(2, 25, 2))
    assert list(rows[0]) == ["step", "train/loss", "train/fg_fraction", "train/grad_norm",
                             "train/lr", "val/dice"]  # the val column appeared at step 8
    assert [r["val/dice"] != "" for r in rows] == [int(r["step"]) % 8 == 0 for r in rows]
    losses = [float(r["train/loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["dice"] > 0.8
    # x0.5 from iteration index 6 and 9 on; logged: the lr of the last iteration before the step
    assert [float(r["train/lr"]) for r in rows[1:5]] == [1e-2, 1e-2, 5e-3, 2.5e-3]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(tmp_path / "config.yaml", ToyConfig) == config

    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["step"] == 24 and last["kind"] == "toy_disk"
    assert last["config"]["train"]["iterations"] == 24 and last["config"]["width"] == 8
    assert {"optimizer", "scheduler", "scaler", "rng", "model"} <= set(last)
    assert set(last["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert last["metrics"] == pytest.approx(metrics)


def run(out_dir, iterations, resume=False, trainer_class=ToyTrainer, **fields):
    trainer = trainer_class(toy_config(out_dir, iterations, **fields), resume=resume)
    trainer.fit()
    return trainer


class RandomValidation(ToyTrainer):
    """Validation that draws random numbers (as random TTA would) must not shift training."""

    def validate(self, step):
        torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
        return super().validate(step)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # validation at 4, 8, 12 in both; the interrupted run also validates and checkpoints at 5
    full = run(tmp_path / "full", 12, trainer_class=RandomValidation)
    run(tmp_path / "split", 5, trainer_class=RandomValidation)
    resumed = run(tmp_path / "split", 12, resume=True, trainer_class=RandomValidation)

    assert resumed.step == 12
    for key, value in full.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[key]), key
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    assert full.best == resumed.best
    steps = [int(r["step"]) for r in read_csv(tmp_path / "split" / "metrics.csv")]
    assert steps == [4, 5, 8, 12]  # nothing logged twice


def test_init_weights_starts_a_fresh_run_from_a_checkpoint(tmp_path):
    first = run(tmp_path / "first", 12)
    fresh = ToyTrainer(toy_config(tmp_path / "again", 12,
                                  init_weights=str(tmp_path / "first" / "last.pt")))
    fresh.setup()
    assert fresh.step == 0                                  # a new schedule, not a resume
    for key, value in first.module.state_dict().items():
        assert torch.equal(value, fresh.module.state_dict()[key]), key
    scratch = ToyTrainer(toy_config(tmp_path / "scratch", 12))
    scratch.setup()
    warm_dice, cold_dice = fresh.validate(0)["dice"], scratch.validate(0)["dice"]
    assert warm_dice > 0.8 > cold_dice                      # it starts where the first run ended
    wider = ToyTrainer(toy_config(tmp_path / "wider", 12,
                                  init_weights=str(tmp_path / "first" / "last.pt")))
    wider.config = replace(wider.config, width=4)
    with pytest.raises(InputError, match="do not fit this model"):
        wider.setup()


def test_resume_restores_the_random_streams(tmp_path):
    # without restoring RNG states, dropout after the restart would draw different masks
    first = run(tmp_path / "a", 3)
    assert first.step == 3
    expected = torch.rand(4)  # what the next draw would have been without the restart
    torch.manual_seed(999)
    trainer = ToyTrainer(toy_config(tmp_path / "a", 3), resume=True)
    trainer.setup()
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(("mode", "best_step"), [("max", 8), ("min", 4)])
def test_best_checkpoint_follows_the_configured_metric(tmp_path, mode, best_step):
    scripted = {4: 0.3, 8: 0.9, 12: 0.5, 16: 0.6}

    class Scripted(ToyTrainer):
        def validate(self, step):
            return {"dice": scripted[step]}

    trainer = Scripted(toy_config(tmp_path, 16, best_mode=mode))
    trainer.fit()
    best = load_checkpoint(tmp_path / "best.pt", kind="toy_disk")
    assert best["step"] == best_step
    assert best["best"] == {"metric": "dice", "value": scripted[best_step], "step": best_step}
    assert "optimizer" not in best  # weights only; resume reads last.pt
    assert load_checkpoint(tmp_path / "last.pt")["best"] == best["best"]


def test_unknown_best_metric_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"best_metric 'dsc' is not among the validation metrics \['dice'\]"):
        run(tmp_path, 4, best_metric="dsc")


def test_changed_config_on_resume_is_refused_unless_allowed(tmp_path):
    run(tmp_path, 4)
    changed = toy_config(tmp_path, 8, optim=OptimConfig(lr=2e-2, milestones=(6, 9)))
    with pytest.raises(InputError, match=r"train\.optim\.lr: 0\.01 -> 0\.02.*--allow-config-change"):
        ToyTrainer(changed, resume=True).fit()
    with pytest.raises(InputError, match=r"width: 8 -> 4"):
        ToyTrainer(replace(changed, width=4), resume=True).setup()
    with pytest.warns(InputWarning, match="changed config"):
        trainer = ToyTrainer(changed, resume=True, allow_config_change=True)
        trainer.fit()
    assert trainer.step == 8


def test_a_train_config_outside_the_experiment_config_is_saved_and_checked(tmp_path):
    @dataclass(frozen=True)
    class Plain:
        width: int = 8

    with pytest.raises(LookupError, match="Plain has no TrainConfig field"):
        ToyTrainer(Plain())
    train = toy_config(tmp_path, 4).train
    ToyTrainer(Plain(), train=train).fit()
    assert load_checkpoint(tmp_path / "last.pt")["train"]["optim"]["lr"] == 1e-2
    ToyTrainer(Plain(), train=replace(train, iterations=6), resume=True).fit()  # run control
    changed = replace(train, iterations=8, optim=replace(train.optim, lr=2e-2))
    with pytest.raises(InputError, match=r"\(train\.optim\.lr: 0\.01 -> 0\.02\)"):
        ToyTrainer(Plain(), train=changed, resume=True).setup()


def test_resume_needs_a_run_and_a_new_run_needs_an_empty_folder(tmp_path):
    with pytest.raises(InputError, match="last.pt: checkpoint file not found"):
        run(tmp_path, 2, resume=True)
    run(tmp_path, 2)
    with pytest.raises(InputError, match="already holds a training run.*--resume"):
        run(tmp_path, 2)
    with pytest.raises(InputError, match="kind is 'toy_disk', expected 'other'"):
        type("Other", (ToyTrainer,), {"kind": "other"})(toy_config(tmp_path, 4), resume=True).setup()


def test_a_non_finite_loss_stops_training(tmp_path):
    class Diverging(ToyTrainer):
        def train_step(self, step):
            out = super().train_step(step)
            return {**out, "loss": out["loss"] * float("nan")}

    with pytest.raises(FloatingPointError, match="loss became nan.*lower optim.lr"):
        Diverging(toy_config(tmp_path, 8)).fit()


@pytest.mark.parametrize(("build", "message"), [
    (lambda: TrainConfig(best_mode="maximum"), r"train\.best_mode = 'maximum' is invalid"),
    (lambda: TrainConfig(checkpoint_every=0), r"train\.checkpoint_every = 0 is invalid"),
    (lambda: OptimConfig(amp_dtype="fp16"), r"optim\.amp_dtype = 'fp16' is invalid.*'bfloat16'"),
    (lambda: OptimConfig(milestones=(9, 6)), r"optim\.milestones = \(9, 6\) is invalid"),
])
def test_invalid_settings_are_input_errors(build, message):
    with pytest.raises(InputError, match=message):
        build()


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(tmp_path):
    from slicevos.training import save_checkpoint

    run(tmp_path, 4)
    payload = load_checkpoint(tmp_path / "last.pt")
    del payload["config"]["width"]  # as written before ToyConfig had a width field
    save_checkpoint(tmp_path / "last.pt", payload)
    assert run(tmp_path, 8, resume=True).step == 8  # the missing field reads as its default
    payload = load_checkpoint(tmp_path / "last.pt")
    del payload["config"]["width"]
    save_checkpoint(tmp_path / "last.pt", payload)
    with pytest.raises(InputError, match=r"width: 8 -> 4"):
        ToyTrainer(replace(toy_config(tmp_path, 12), width=4), resume=True).setup()
