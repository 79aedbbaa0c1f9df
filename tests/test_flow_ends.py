"""The flow engine's organ ends beyond the outermost key: a second opinion (the end rule
walking from the next key inward) ends an organ only where the pass's own support also falls
(``FlowConfig.opinion_support``; docs/labeling.md, "Keys that make it worse")."""

from __future__ import annotations

import numpy as np
import pytest

from slicevos.errors import InputError
from slicevos.inference.engines.flow.engine import FlowConfig, FlowPropagator
from slicevos.io import load_labels, load_volume
from slicevos.metrics.overlap import dice
from slicevos.preprocessing.windowing import window_volume
from tests.conftest import real_case

LIVER = 1


def liver_from_three_keys(**overrides: float) -> tuple[np.ndarray, np.ndarray]:
    """lidc's liver (true slices 6-64) drawn on slices 20, 35 and 50: (truth, labels) of it."""
    folder = real_case("lidc_chest_abdomen133")
    volume = load_volume(folder / "ct.nii.gz")
    truth, _ = load_labels(folder / "label_flare.nii.gz", volume)
    propagator = FlowPropagator(FlowConfig(**overrides))
    session = propagator.start(window_volume(volume.hu, propagator.windows))
    for z in (20, 35, 50):
        session.add_object_mask(z, LIVER, truth[z] == LIVER)
    return truth == LIVER, session.run() == LIVER


def test_a_walk_that_lost_the_organ_does_not_end_it_where_the_pass_still_follows_it() -> None:
    """The walk from slice 35 carries a shape composed over 15-26 slices: beyond the outer
    keys it covers 3-4 times the liver's area and finds little liver under it (slices 15 and
    61), while the passes from 20 and 50 still follow the liver there (their support 0.92
    and 0.86 of their key's). With the walk's word alone the liver kept only slices 16-60."""
    truth, labels = liver_from_three_keys()
    present = np.flatnonzero(labels.any(axis=(1, 2)))
    assert present[0] <= 10 and present[-1] >= 62, (present[0], present[-1])
    _, walk_decides = liver_from_three_keys(opinion_support=1e9)
    cut = np.flatnonzero(walk_decides.any(axis=(1, 2)))
    assert cut[0] > present[0] + 5 and cut[-1] < present[-1]
    assert dice(truth, labels) > dice(truth, walk_decides) + 0.005


def test_an_opinion_support_below_one_is_refused() -> None:
    with pytest.raises(InputError, match="opinion_support"):
        FlowConfig(opinion_support=0.5)
