"""slicevos-benchmark-gpu --tiny on the CPU: every stage (the torchrun one included) runs the
real trainers and pipeline, and the table and the JSON hold each of them."""

from __future__ import annotations

import json

import pytest

from slicevos.cli.benchmark_gpu import STAGES, format_table, main, parse_stages
from slicevos.errors import InputError


@pytest.mark.slow
def test_tiny_run_on_cpu_writes_every_stage(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    code = main(["--tiny", "--device", "cpu", "--threads", "1", "--no-progress",
                 "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed

    payload = json.loads(out.read_text())
    assert payload["ok"] is True and payload["tiny"] is True
    assert payload["environment"]["device"] == "cpu"
    rows = {row["stage"]: row for row in payload["stages"]}
    assert list(rows) == list(STAGES)
    for stage, row in rows.items():
        assert row["status"] == "ok", (stage, row["status"])
        assert row["seconds"] > 0 and row["peak_mb"] > 0, stage
        assert row["memory"] == "peak RSS (cpu)"
    for stage in ("reference", "propagation", "ddp"):
        assert rows[stage]["it_per_s"] > 0
        assert rows[stage]["iterations"] == (2 if stage == "ddp" else 4)
        assert rows[stage]["warmup"] == 1
        assert rows[stage]["amp"] == "off"
    assert rows["ddp"]["backend"] == "gloo" and rows["ddp"]["ddp"] is True
    assert rows["ddp"]["world_size"] == 1
    inference = rows["inference"]
    assert inference["volume_shape"] == [24, 64, 64]
    assert inference["within_tolerance"] is None  # no FLARE verdict on the CPU
    assert inference["checkpoints"]["reference"] == rows["reference"]["checkpoint"]

    table = printed[printed.index("device: "):]
    for stage in STAGES:
        assert f"\n{stage} " in table
    assert "n/a (cpu)" in table and "all stages ok" in printed


def test_bad_stage_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--stages", "nonsense", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: --stages: unknown stage(s) ['nonsense']. Fix: name any of")
    assert not out.exists()


def test_stage_names_and_table():
    assert parse_stages(["ddp,reference", "inference"]) == ["reference", "inference", "ddp"]
    with pytest.raises(InputError):
        parse_stages([])
    env = {"device": "cuda", "device_name": "GPU", "torch": "2", "cuda": "12", "cudnn": 9,
           "slicevos": "0"}
    rows = [{"stage": "inference", "status": "ok", "seconds": 16.0, "peak_mb": 3000.0,
             "memory": "gpu", "within_tolerance": False},
            {"stage": "reference", "status": "error: boom", "memory": "-"}]
    lines = format_table(env, rows).splitlines()
    assert lines[0].startswith("device: GPU (cuda), torch 2, CUDA 12")
    assert "FAIL" in lines[2] and lines[3].endswith("error: boom")
