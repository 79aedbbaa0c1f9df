"""Tiny trained checkpoints and phantom cases for the whole-volume inference tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from slicevos.config import load_config
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.phantom import PhantomConfig, write_phantom_dataset
from slicevos.training.propagation import PropagationConfig, PropagationTrainer
from slicevos.training.reference import ReferenceConfig, ReferenceTrainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHAPE = (16, 64, 64)


@dataclass(frozen=True)
class TinyModels:
    reference: Path
    propagation: Path
    dataset: Path  # phantoms in the FLARE layout (imagesTr/, labelsTr/)


def _train(role: str, config_cls, trainer_cls, cache: Path, out: Path, iterations: int) -> Path:
    config = load_config(CONFIGS / role / "tiny.yaml", config_cls, assignments=[
        f"data.cache_dir={cache}", f"train.out_dir={out}", f"train.iterations={iterations}",
        f"train.val_every={iterations}", f"train.checkpoint_every={iterations}",
        "data.val_fraction=0.0", "data.val_cases=[]"])
    trainer_cls(config).fit()
    return out / "last.pt"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """A tiny reference pair and a tiny per-object STCN, briefly trained on 64x64 phantoms."""
    root = tmp_path_factory.mktemp("tiny_models")
    write_phantom_dataset(root / "ds", n_labeled=3, n_unlabeled=1,
                          config=PhantomConfig(shape=SHAPE), seed=3, progress=False)
    prepare_cache(root / "ds", root / "cache", PrepareConfig(workers=1), progress=False)
    reference = _train("reference", ReferenceConfig, ReferenceTrainer, root / "cache",
                       root / "reference", 100)
    propagation = _train("propagation", PropagationConfig, PropagationTrainer, root / "cache",
                         root / "propagation", 30)
    return TinyModels(reference, propagation, root / "ds")
