"""A real two-process DDP run through torchrun on CPU (gloo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slicevos.training import load_checkpoint

TOY_SCRIPT = Path(__file__).with_name("toy_task.py")


def find_torchrun() -> str | None:
    beside_python = Path(sys.executable).with_name("torchrun")
    return str(beside_python) if beside_python.is_file() else shutil.which("torchrun")


@pytest.mark.slow
def test_torchrun_two_ranks_on_cpu_share_weights_and_write_one_checkpoint(tmp_path):
    torchrun = find_torchrun()
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(TOY_SCRIPT), str(tmp_path)],
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [
        "best.pt", "last.pt", "rank0_weights.pt", "rank1_weights.pt"]
    rank0 = torch.load(tmp_path / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1_weights.pt", weights_only=True)
    last = load_checkpoint(tmp_path / "last.pt", kind="toy_disk")
    assert last["step"] == 6
    # each rank saw different data: the weights are equal only if gradients were synchronised
    # (BatchNorm running statistics stay per rank until DDP broadcasts rank 0's at a forward)
    weights = [k for k in rank0 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(weights) == 6
    for key in weights:
        assert torch.equal(rank0[key], rank1[key]), key
    for key, value in rank0.items():
        assert torch.equal(value, last["model"][key]), key
    assert len(last["rng_by_rank"]) == 2
    assert not torch.equal(last["rng_by_rank"][0]["torch"], last["rng_by_rank"][1]["torch"])
    assert (tmp_path / "metrics.csv").is_file()
