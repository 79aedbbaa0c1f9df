"""A phantom slice cache shared by the propagation training tests of one module."""

from __future__ import annotations

from pathlib import Path

import pytest

from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.data.phantom import PhantomConfig
from slicevos.data.phantom_dataset import write_phantom_dataset


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """3 labeled 24x64x64 phantoms (seed 1) in the FLARE layout (``cache_dir.parent / "ds"``)
    and their flare22 slice cache."""
    root = tmp_path_factory.mktemp("clips")
    write_phantom_dataset(root / "ds", n_labeled=3, n_unlabeled=0,
                          config=PhantomConfig(shape=(24, 64, 64)), seed=1, progress=False)
    prepare_cache(root / "ds", root / "cache", PrepareConfig(schema="flare22", workers=1),
                  progress=False)
    return root / "cache"
