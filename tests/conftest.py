"""Shared fixtures. Tests that need the real CT folder skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one BLAS/OpenMP thread per xdist worker: several workers each using every core
    # oversubscribe the CPU and make torch tests tens of times slower
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

REAL_DATA = Path(
    os.environ.get("SLICEVOS_REAL_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real")
).resolve()
REAL_CASES = ("example_ct_sm30", "example_ct_full112", "example_ct_dicom20", "aorta_report_crop", "ct3slice")


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CT folder {REAL_DATA} is absent (set SLICEVOS_REAL_DATA to use another)")
    return REAL_DATA


def real_case(name: str) -> Path:
    path = REAL_DATA / name
    if not path.is_dir():
        pytest.skip(f"real CT case {path} is absent")
    return path
