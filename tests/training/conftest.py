"""A phantom slice cache shared by the propagation training tests of one module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import phantom_cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """3 labeled 24x64x64 phantoms (seed 1) in the FLARE layout (``cache_dir.parent / "ds"``)
    and their flare22 slice cache."""
    return phantom_cache(tmp_path_factory.mktemp("clips"), n_labeled=3, seed=1)
