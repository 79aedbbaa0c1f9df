"""Shared fixtures. Tests that need the real CT folder skip when it is absent.

Every test (and every fixture that trains a model) runs with one torch thread and freshly
seeded global RNGs, whatever ``-n``, the test order or the machine: a float sum's rounding
depends on how many threads split it, so a model trained with 2 threads differs from one
trained with 1, and a training-outcome assertion near its bound then passes or fails with the
environment (issue 13). Pinned, a trained model is bit-identical in every run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# one BLAS/OpenMP thread in every run (an xdist worker, or -n 0 alike): the subprocesses that
# tests start (a killed-and-resumed training run, torchrun) inherit it, so what they train
# matches what the pinned in-process torch trains (a run with 2 threads rounds differently:
# tests/pseudo/test_rounds.py compared a 2-thread subprocess with a 1-thread run under -n 0);
# it also keeps several xdist workers from oversubscribing the CPU
os.environ["OMP_NUM_THREADS"] = "1"
# ONNX exports that the reference backend caches (slicevos.inference.onnx.runtime) go to one
# folder per test run, shared by its xdist workers, never to the user's ~/.cache
os.environ["SLICEVOS_CACHE"] = str(Path(tempfile.gettempdir()) / (
    "slicevos-test-cache-" + os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))))
import torch  # noqa: E402 (after OMP_NUM_THREADS)

from slicevos.training.seeding import seed_everything  # noqa: E402

TEST_THREADS = 1
TEST_SEED = 0


def pin_torch() -> None:
    """One torch thread, default (not forced) deterministic mode, every global RNG seeded."""
    torch.set_num_threads(TEST_THREADS)
    torch.use_deterministic_algorithms(False)
    seed_everything(TEST_SEED)


pin_torch()  # for what runs before the first test's fixtures (session and module fixtures)


@pytest.fixture(autouse=True)
def _pinned_torch() -> Iterator[None]:
    """Pin threads and seeds before each test and again after it, so that a test changing them
    (e.g. a benchmark CLI's ``--threads``) cannot change the next test or a module/session
    fixture built between tests (fixtures such as ``trained`` run before function fixtures)."""
    pin_torch()
    yield
    pin_torch()

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


def phantom_cache(root: Path, n_labeled: int, seed: int) -> Path:
    """``n_labeled`` labeled 24x64x64 phantoms (FLARE layout in ``root / "ds"``) and their
    flare22 slice cache ``root / "cache"`` (returned)."""
    from slicevos.data.cache_build import PrepareConfig, prepare_cache
    from slicevos.phantom import PhantomConfig, write_phantom_dataset

    write_phantom_dataset(root / "ds", n_labeled=n_labeled, n_unlabeled=0,
                          config=PhantomConfig(shape=(24, 64, 64)), seed=seed, progress=False)
    prepare_cache(root / "ds", root / "cache", PrepareConfig(schema="flare22", workers=1),
                  progress=False)
    return root / "cache"
