"""Organ tips beyond the outermost key: where the end rule ends an organ whose propagated
area was shrinking fast (its radius by ``tip_shrink`` px or more per slice), it goes on
tapering at that rate for up to ``tip_slices`` slices (the warped shape cut to the
extrapolated area) instead of stopping at once. On 3 mm slices a kidney's last slices are
mixed with fat by partial volume, look unlike it, and the rule ended it 2-3 slices early
(docs/labeling.md, "Organ tips")."""

from __future__ import annotations

import numpy as np
import pytest

from slicevos.data.optical_flow import signed_distance
from slicevos.errors import InputError
from slicevos.inference.engines.flow.ends import level_cut, tip_slope
from slicevos.inference.engines.flow.engine import FlowConfig
from slicevos.metrics.overlap import dice
from tests import flow_cases

RIGHT_KIDNEY, GALLBLADDER = 2, 9


def test_a_taper_is_a_radius_that_shrinks_by_the_set_pixels_per_slice() -> None:
    # 241 -> 100 px over the last 3 slices: the radius 8.8 -> 5.6 px, 1.6 px per slice
    assert tip_slope([241, 190, 166, 138, 100], shrink=0.5) == pytest.approx(-33.0)
    assert tip_slope([164, 157, 143], shrink=0.5) is None  # 10 px a slice at radius 6.7
    assert tip_slope([100, 120, 140], shrink=0.5) is None  # growing
    assert tip_slope([100], shrink=0.5) is None
    assert tip_slope([200, 100], shrink=0.5) == pytest.approx(-100.0)


def test_a_level_cut_keeps_the_deepest_pixels_of_the_area() -> None:
    """A 20x20 square of signed distances cut to 36 px keeps its 6x6 middle (the pixels
    farthest inside), values stay above the floor, and an area it exceeds changes nothing."""
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    warped = np.clip(signed_distance(mask), -6.0, 24.0)
    cut = level_cut(warped, 36, floor=-6.0)
    assert cut.dtype == np.float32 and cut.shape == warped.shape
    assert (cut > 0).sum() == 36 and (cut > 0)[12:18, 12:18].all()
    assert cut.min() >= -6.0
    assert np.array_equal(level_cut(warped, 400, floor=-6.0), warped)
    assert not (level_cut(warped, 0, floor=-6.0) > 0).any()


def organ_from_keys(organ: int, keys: tuple[int, ...], **overrides: object
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``example_ct_full112``'s (3 mm slices) ``organ`` drawn (true mask) on ``keys``:
    (truth, labels) of it."""
    return flow_cases.organ_from_keys("example_ct_full112", organ, keys, **overrides)


@pytest.mark.parametrize("patience", [1, 2])
def test_a_kidney_that_tapers_keeps_its_last_slices(patience: int) -> None:
    """The right kidney (true slices 66-101) drawn on slices 74, 83 and 92: the rule ended
    it at slices 69 and 99 (the slices before hold 66 and 53 px of it); its tips taper on
    (slice 68 within 10 px of the truth's 66) and its DSC rises 0.945 -> 0.953. With
    ``end_patience`` 2 the rule ends it a slice later at the bottom (68), and the slices
    held back since the end get the tip too."""
    truth, tipped = organ_from_keys(RIGHT_KIDNEY, (74, 83, 92), end_patience=patience)
    _, ended = organ_from_keys(RIGHT_KIDNEY, (74, 83, 92), end_patience=patience,
                               tip_slices=None)
    areas = tipped.sum(axis=(1, 2))
    tipped_at = np.flatnonzero(areas)
    ended_at = np.flatnonzero(ended.any(axis=(1, 2)))
    assert tipped_at[0] < ended_at[0] and tipped_at[-1] > ended_at[-1]
    assert 66 <= tipped_at[0] and tipped_at[-1] <= 102
    assert areas[67] < areas[68] < areas[69] and areas[101] < areas[100] < areas[99]
    assert abs(int(areas[68]) - int(truth[68].sum())) <= 10
    assert dice(truth, tipped) > dice(truth, ended) + (0.005 if patience == 1 else 0.0)


def test_an_organ_that_keeps_its_area_ends_where_the_rule_ends_it() -> None:
    """The gallbladder drawn on its middle slice (89): its propagated area barely shrinks
    towards either end (164 -> 143 px, 155 -> 132 px over the last 3 slices), so no tip:
    the same labels as without tips."""
    _, tipped = organ_from_keys(GALLBLADDER, (89,))
    _, ended = organ_from_keys(GALLBLADDER, (89,), tip_slices=None)
    assert np.array_equal(tipped, ended)


@pytest.mark.parametrize("field, value", [("tip_slices", 0), ("tip_slices", 1.5),
                                          ("tip_shrink", 0.0), ("tip_shrink", -1.0)])
def test_a_bad_tip_setting_is_refused(field: str, value: float) -> None:
    with pytest.raises(InputError, match=field):
        FlowConfig(**{field: value})
