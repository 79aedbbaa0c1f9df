"""Real CT cases for the flow engine's tests: a case's HU volume and true labels (read once
per process; the test skips when the case is absent), and one organ propagated from its true
masks on given key slices."""

from __future__ import annotations

import functools

import numpy as np

from slicevos.inference.engines.flow.engine import FlowConfig, FlowPropagator
from slicevos.io import load_labels, load_volume
from slicevos.preprocessing.windowing import window_volume
from tests.conftest import real_case


@functools.lru_cache(maxsize=2)
def hu_and_truth(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The shared real case ``name``: its HU volume (D, H, W) and true flare22 labels."""
    folder = real_case(name)
    volume = load_volume(folder / "ct.nii.gz")
    truth, _ = load_labels(folder / "label_flare.nii.gz", volume)
    return volume.hu, truth


def organ_from_keys(name: str, organ: int, keys: tuple[int, ...], **overrides: object
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Case ``name``'s ``organ`` drawn (its true mask) on ``keys`` and propagated by the flow
    engine (``FlowConfig(**overrides)``): (truth, labels) of that organ, (D, H, W) bool."""
    hu, truth = hu_and_truth(name)
    propagator = FlowPropagator(FlowConfig(**overrides))
    session = propagator.start(window_volume(hu, propagator.windows))
    for z in keys:
        session.add_object_mask(z, organ, truth[z] == organ)
    return truth == organ, session.run() == organ
