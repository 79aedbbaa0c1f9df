"""Seeds and random-number-generator states (torch, CUDA, numpy, Python).

The legacy global numpy RNG is handled on purpose: libraries (albumentations among them) draw
from it, so it must be seeded and restored like the others. RNG states are stored in checkpoints as tensors, lists and ints only, so a checkpoint loads with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def derive_seed(seed: int, rank: int = 0) -> int:
    """A 32-bit seed for ``(seed, rank)``; different ranks get unrelated streams."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch (all CUDA devices too) from ``(seed, rank)``."""
    value = derive_seed(seed, rank)
    random.seed(value)
    np.random.seed(value)  # noqa: NPY002 (global state used by libraries)
    torch.manual_seed(value)


def set_deterministic(enabled: bool) -> None:
    """Ask torch for deterministic kernels (slower on CUDA; raises on ops that have none)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled)


def get_rng_state() -> dict[str, Any]:
    """Every global RNG state of this process, as checkpoint-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` returned (CUDA states only when CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():  # as many devices as both machines have
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    legacy = (npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


@contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block (e.g. validation) without disturbing the training random streams."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
