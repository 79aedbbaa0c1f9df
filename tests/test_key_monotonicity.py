"""A correct key should not make propagation worse: on a shared real volume, per-organ keys
added by bisection (the middle of the largest gap between an organ's keys and its true ends)
never lower the DSC of the liver, kidneys or spleen by more than 0.005, and the mean DSC over
every organ rises with the keys; and no organ at all, thin and tubular ones included, loses
more than 0.005 after a bisected key (docs/labeling.md, "Keys that make it worse")."""

from __future__ import annotations

import numpy as np
import pytest

from slicevos.inference.engines.flow.engine import FlowConfig, FlowPropagator
from slicevos.io import load_labels, load_volume
from slicevos.metrics.overlap import dice
from slicevos.preprocessing.windowing import window_volume
from tests.conftest import real_case

BULKY = (1, 2, 3, 13)  # liver, right kidney, spleen, left kidney (FLARE22 ids)


def bisect_slice(present: np.ndarray, keys: list[int]) -> int | None:
    bounds = sorted({int(present[0]), *(k for k in keys if present[0] <= k <= present[-1]),
                     int(present[-1])})
    gaps = sorted(zip(bounds[:-1], bounds[1:], strict=True), key=lambda g: (g[0] - g[1], g[0]))
    return next(((a + b) // 2 for a, b in gaps if (a + b) // 2 not in keys), None)


def bisected_curves() -> tuple[dict[int, list[float]], list[int]]:
    """Per organ, its DSC from its middle slice and after each of 5 bisected keys."""
    folder = real_case("example_ct_full112")
    volume = load_volume(folder / "ct.nii.gz")
    truth, _ = load_labels(folder / "label_flare.nii.gz", volume)
    propagator = FlowPropagator(FlowConfig(flow_cache_mb=256))
    session = propagator.start(window_volume(volume.hu, propagator.windows))
    organs = [int(o) for o in np.unique(truth) if o]
    present = {o: np.flatnonzero((truth == o).any(axis=(1, 2))) for o in organs}
    for organ in organs:
        z = int(np.median(present[organ]))
        session.add_object_mask(z, organ, truth[z] == organ)
    session.run()
    curves = {o: [dice(truth == o, session.labels == o)] for o in organs}
    for _ in range(5):
        for organ in organs:
            z = bisect_slice(present[organ], session.object_key_slices(organ))
            if z is not None:
                session.add_object_mask(z, organ, truth[z] == organ)
                session.run()
            curves[organ].append(dice(truth == organ, session.labels == organ))
    return curves, organs


def test_bisected_keys_do_not_lower_bulky_organs() -> None:
    curves, organs = bisected_curves()
    for organ in BULKY:
        steps = np.diff(curves[organ])
        assert steps.min() >= -0.005, f"organ {organ}: {np.round(curves[organ], 3)}"
    means = np.mean([curves[o] for o in organs], axis=0)
    assert means[-1] > means[0] + 0.1, np.round(means, 3)


def test_no_bisected_key_lowers_any_organ() -> None:
    """Thin and tubular organs too: the aorta, IVC and pancreas each lost 0.17-0.37 after
    their fifth bisected key while the end rule's intensity model was blurred wider than
    the vessel (it then never ended the aorta below its bifurcation). It passed while
    re-propagation left the passes beyond the ends stale (a gallbladder drop of 0.069 was
    hidden); with labels that follow the keys, one IVC step failed, and with the flow's
    smoothness weight of 5 one gallbladder step did (0.944 -> 0.880 after a key next to
    its outermost one) until a second opinion skipped such a key (``OPINION_GAP``)."""
    curves, organs = bisected_curves()
    assert all(np.diff(curves[o]).min() >= -0.005 for o in organs)


@pytest.mark.parametrize("present, keys, expected", [
    (np.arange(10, 31), [20], 15), (np.arange(10, 31), [15, 20], 25),
    (np.arange(5, 8), [5, 6, 7], None)])
def test_bisect_picks_the_middle_of_the_largest_gap(present, keys, expected) -> None:
    assert bisect_slice(present, keys) == expected
