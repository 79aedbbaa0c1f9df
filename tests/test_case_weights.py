"""data.case_weights: how often the cases of a training set are drawn, for slices (reference
training) and clips (propagation training)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from slicevos.data.clips import ClipData, ClipDataConfig
from slicevos.data.sampling import case_weight_factors
from slicevos.data.slices import SliceData, SliceDataConfig
from slicevos.errors import InputError
from tests.conftest import phantom_cache

CASES = ("phantom_0000", "phantom_0001", "phantom_0002")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return phantom_cache(tmp_path_factory.mktemp("weights"), n_labeled=3, seed=4)


def test_factors_take_the_first_matching_pattern():
    cases = ["h_0001", "h_0002", "c_0001", "phantom_0000"]
    factors = case_weight_factors(cases, {"h_0002": 3.0, "h_*": 0.5, "phantom_*": 0})
    assert factors.tolist() == [0.5, 3.0, 1.0, 0.0]
    assert case_weight_factors(cases, None).tolist() == [1.0] * 4


@pytest.mark.parametrize(("weights", "message"), [
    ({"x_*": 2.0}, "matches none"),
    ({"h_*": -1.0}, "weight >= 0"),
    ({"*": 0}, "every training case weight 0"),
])
def test_bad_weights_are_input_errors(weights, message):
    with pytest.raises(InputError, match=message):
        case_weight_factors(["h_0001", "c_0001"], weights)


def _slice_cases(cache, weights, draws=600):
    data = SliceData(SliceDataConfig(cache_dir=str(cache), crop_size=(64, 64),
                                     case_weights=weights))
    stream = data.datasets["labeled"]
    return Counter(stream.key(step, 0).case_id for step in range(draws))


def test_slice_draws_follow_the_case_weights(cache):
    plain = _slice_cases(cache, None)
    weighted = _slice_cases(cache, {"phantom_0000": 4.0, "phantom_0002": 0})
    assert "phantom_0002" not in weighted and plain["phantom_0002"] > 100
    # phantom_0000 should now take about 4/5 of the draws (the cases have equal depth)
    assert weighted["phantom_0000"] / 600 > 0.7 > plain["phantom_0000"] / 600


def test_clip_draws_follow_the_case_weights_and_validation_does_not(cache):
    config = ClipDataConfig(cache_dir=str(cache), crop_size=(64, 64), batch_size=1,
                            min_object_pixels=20, max_gap_end=3, val_cases=("phantom_0001",),
                            case_weights={"phantom_0000": 0})
    data = ClipData(config)
    drawn = {data.train_dataset.sampler.key(0, 0, step, 0).case_id for step in range(200)}
    assert drawn == {"phantom_0002"}
    assert np.asarray(data.val_batch(0).masks).any()
