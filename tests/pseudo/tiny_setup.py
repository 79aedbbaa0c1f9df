"""Tiny phantoms and reference checkpoints shared by the pseudo-label tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from slicevos.config import load_config
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.phantom import PhantomConfig, write_phantom_dataset
from slicevos.training.reference import ReferenceConfig, ReferenceTrainer

ROOT = Path(__file__).resolve().parents[2]
TINY_REFERENCE = ROOT / "configs" / "reference" / "tiny.yaml"
TINY_PHANTOM = PhantomConfig(shape=(12, 48, 48))


def tiny_dataset(root: Path, n_labeled: int = 2, n_unlabeled: int = 3) -> Path:
    """A FLARE-layout phantom folder of 12x48x48 volumes."""
    write_phantom_dataset(root, n_labeled=n_labeled, n_unlabeled=n_unlabeled,
                          config=TINY_PHANTOM, seed=0, progress=False)
    return root


def tiny_checkpoints(dataset: Path, work: Path, seeds: tuple[int, ...] = (0, 1),
                     iterations: int = 4) -> list[Path]:
    """Train the tiny reference pair a few iterations per seed; the last.pt files."""
    cache = work / "cache"
    prepare_cache(dataset, cache, PrepareConfig(workers=1), progress=False)
    out = []
    for seed in seeds:
        config = load_config(TINY_REFERENCE, ReferenceConfig, assignments=[
            f"data.cache_dir={cache}", f"train.out_dir={work / f'seed{seed}'}",
            f"train.seed={seed}", f"train.iterations={iterations}",
            f"train.checkpoint_every={iterations}", f"train.val_every={iterations}"])
        ReferenceTrainer(config).fit()
        out.append(work / f"seed{seed}" / "last.pt")
    return out


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread, like a worker started by torchrun (OMP_NUM_THREADS=1): float sums
    then match bit for bit between this process and such workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
