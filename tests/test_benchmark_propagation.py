"""benchmark_propagation: the speed part times both object modes; the quality part runs on
held-out phantoms and compares several checkpoints (per_object, joint and flow-guided) side
by side, each as its own engine and fused."""

from __future__ import annotations

from pathlib import Path

import pytest

from slicevos.cli.benchmark_propagation import main

TINY = Path(__file__).resolve().parents[1] / "configs" / "propagation" / "tiny.yaml"


def test_speed_part_times_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--parts", "speed", "--configs", "tiny", "--sizes", "48", "--objects", "1",
                 "13", "--depth", "3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("tiny")]
    assert [r[1] for r in rows] == ["per_object", "joint"]
    assert all(len(r) == 6 and float(r[4]) > 0 and float(r[5]) > 0 for r in rows)


def test_quality_on_phantoms_with_checkpoints_of_both_modes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slicevos.config import load_config
    from slicevos.data.cache_build import PrepareConfig, prepare_cache
    from slicevos.phantom import PhantomConfig, write_phantom_dataset
    from slicevos.training.propagation import PropagationConfig, PropagationTrainer

    write_phantom_dataset(tmp_path / "ds", n_labeled=1, n_unlabeled=0,
                          config=PhantomConfig(shape=(16, 48, 48)), seed=1, progress=False)
    prepare_cache(tmp_path / "ds", tmp_path / "cache", PrepareConfig(workers=1), progress=False)
    runs = {"per_object": ("per_object", "false"), "joint": ("joint", "false"),
            "guided": ("joint", "true")}  # guided: a flow-guided joint network
    for name, (mode, prior) in runs.items():
        PropagationTrainer(load_config(TINY, PropagationConfig, assignments=[
            f"data.cache_dir={tmp_path / 'cache'}", f"train.out_dir={tmp_path / name}",
            "train.iterations=1", "train.checkpoint_every=1", "data.crop_size=[48,48]",
            f"model.object_mode={mode}", f"model.prior_input={prior}"])).fit()
    assert main(["--parts", "quality", "--data", "phantom", "--phantom-cases", "2",
                 "--phantom-shape", "16", "48", "48", "--key-steps", "5", "--checkpoint",
                 str(tmp_path / "per_object" / "last.pt"),
                 str(tmp_path / "joint" / "last.pt"), str(tmp_path / "guided" / "last.pt")]) == 0
    out = capsys.readouterr().out
    assert "phantom_s1000, phantom_s1001" in out
    methods = {line[13:].split("  ")[0] for line in out.splitlines()
               if line.startswith("every 5 @")}
    assert {"nearest copy", "stcn per_object", "stcn joint", "guided guided",
            "fused guided", "flow", "flow + rules"} <= methods
    assert {line[:13].strip() for line in out.splitlines() if line.startswith("every 5 @")} \
        == {"every 5 @0", "every 5 @2"}  # both key offsets by default


def test_quality_on_multi_tumor_phantoms_keeps_every_tumor(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Phantoms with several tumors: the tumor column is reported, and the pipeline's component
    rules (``flow + rules``) score the tumors exactly as flow alone: no lesion is cut."""
    assert main(["--parts", "quality", "--data", "tumor_phantom", "--phantom-cases", "1",
                 "--phantom-shape", "60", "64", "64", "--key-steps", "4",
                 "--key-offsets", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    organs = next(line for line in lines if line.startswith("keys")).split()[3:-2]

    def tumor_dsc(method: str) -> float:
        row = next(line for line in lines if line.startswith("every 4 @1")
                   and line[13:].split("  ")[0] == method and " all " in line)
        return float(row.split()[-len(organs) - 2:][organs.index("tumor")])

    assert tumor_dsc("flow + rules") == tumor_dsc("flow") > 0
