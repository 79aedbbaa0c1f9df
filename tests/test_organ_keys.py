"""Per-organ keys: a key is (slice, organ). Correcting one organ on a slice leaves the other
organs there propagated; whole-slice keys vouch for every organ; removing a key and
restoring a slice's keys (undo) give back the first result; the STCN engine takes them too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_propagation_session import make_net, volume  # tests/ is on sys.path

from slicevos.errors import InputError
from slicevos.inference.engines.flow.engine import OUTER_REACH, FlowPropagator
from slicevos.inference.engines.stcn.engine import Propagator
from slicevos.inference.suggestions import suggest_slices, tent_sums
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.preprocessing.windowing import window_volume


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, PhantomConfig(shape=(32, 64, 64)))


def flow_session(phantom):
    propagator = FlowPropagator()
    return propagator.start(window_volume(phantom.to_volume().hu, propagator.windows))


def middle(labels: np.ndarray, organ: int) -> int:
    return int(np.median(np.flatnonzero((labels == organ).any(axis=(1, 2)))))


def start_organs(phantom, count: int):
    """A flow session with the first ``count`` organs drawn on their middle slices (per-organ
    keys); returns (session, organs)."""
    truth = phantom.labels
    organs = [int(o) for o in np.unique(truth) if o][:count]
    session = flow_session(phantom)
    for organ in organs:
        session.add_object_mask(middle(truth, organ), organ, truth[middle(truth, organ)] == organ)
    return session, organs


def test_organ_key_keeps_the_other_organs_propagated(phantom) -> None:
    truth = phantom.labels
    session, organs = start_organs(phantom, 3)
    first = session.run().copy()
    target, other = organs[0], organs[1]
    # redraw ``target`` on a slice where ``other`` is propagated (not drawn)
    z = next(z for z in range(len(truth)) if (first[z] == other).any()
             and z not in session.object_key_slices(other) and (truth[z] == target).any()
             and z not in session.object_key_slices(target))
    session.add_object_mask(z, target, truth[z] == target)
    assert session.key_slices == [] and z in session.object_key_slices(target)
    assert z not in session.object_key_slices(other)
    steps = list(session.propagate())
    assert steps and all(z_step != z for z_step, _ in steps)
    after = session.labels
    # the other organs' pixels change only where the redrawn organ now claims them
    changed = (first != after) & (after != target) & (first != target)
    assert not changed.any()
    np.testing.assert_array_equal(after[z] == target, truth[z] == target)
    # the corrected organ now matches the truth better around z
    near = slice(max(0, z - 2), z + 3)
    dice = lambda p: 2 * (p & (truth[near] == target)).sum() / (  # noqa: E731
        p.sum() + (truth[near] == target).sum())
    assert dice(after[near] == target) >= dice(first[near] == target)


def test_corrections_one_at_a_time_give_what_the_same_keys_give_at_once(phantom) -> None:
    """The labels are a function of the keys, not of the order they came in. A pass beyond
    an organ's outermost key reads the OUTER_REACH outermost keys on its side (its end model
    and second opinion), so a change to one of those redoes that pass; a key with that many
    keys on each side redoes only its own segments. The result equals a fresh
    session given every key at once."""
    truth = phantom.labels
    depth = len(truth)
    reach = OUTER_REACH
    session, organs = start_organs(phantom, 3)
    session.run()
    for organ in organs:
        mid = middle(truth, organ)
        assert 0 <= mid - 2 * reach and mid + 2 * reach < depth

        def redone_after(z: int, organ: int = organ) -> set[int]:
            session.add_object_mask(z, organ, truth[z] == organ)  # may be past its end
            return {z for z, _ in session.propagate()}

        far = mid + 2 * reach
        # below the middle key too: the new key is the next one inward from it
        assert redone_after(far) == set(range(depth)) - {mid, far}
        for i in range(1, reach + 1):
            for z in (mid - 2 * i, mid + 2 * i):
                if z != far:
                    redone_after(z)
        assert redone_after(mid) == {mid - 1, mid + 1}  # ``reach`` keys on each side
        # one of the keys the pass beyond the upper end reads
        assert redone_after(mid + 2) == {mid + 1, mid + 3} | set(range(far + 1, depth))
    fresh = flow_session(phantom)
    for organ in organs:
        for z in session.organ_keys[organ]:
            fresh.add_object_mask(z, organ, truth[z] == organ)
    np.testing.assert_array_equal(session.labels, fresh.run())


def test_whole_key_vouches_absent_organs_and_absorbs_organ_keys(phantom) -> None:
    truth = phantom.labels
    session, (organ,) = start_organs(phantom, 1)
    z = middle(truth, organ)
    session.add_mask(z, truth[z])  # "this slice is done": every organ, absent ones too
    assert session.organ_keys[organ] == {} and session.key_slices == [z]
    # an organ key on a whole-slice key edits that key's labels
    session.add_object_mask(z, organ, np.zeros(truth[z].shape, bool))
    assert not (session.key_masks[z] == organ).any() and session.key_slices == [z]


def test_remove_and_restore_a_slice_gives_back_the_result(phantom) -> None:
    truth = phantom.labels
    session, (organ,) = start_organs(phantom, 1)
    z = middle(truth, organ)
    first = session.run().copy()
    snapshot = session.keys_of_slice(z + 3)
    session.add_object_mask(z + 3, organ, truth[z + 3] == organ)
    session.run()
    session.set_keys_of_slice(z + 3, *snapshot)
    np.testing.assert_array_equal(session.run(), first)
    session.remove_key(z, organ)
    with pytest.raises(InputError, match="no key slice"):
        session.run()


def test_empty_organ_key_ends_that_organ_only(phantom) -> None:
    truth = phantom.labels
    session, organs = start_organs(phantom, 2)
    first = session.run().copy()
    target = organs[0]
    end = middle(truth, target) + 2
    session.add_object_mask(end, target, np.zeros(truth.shape[1:], bool))  # "ends here"
    labels = session.run()
    assert not (labels[end] == target).any()
    assert ((labels == organs[1]) == (first == organs[1])).all()


def test_suggestions_are_per_organ_and_avoid_its_keys(phantom) -> None:
    truth = phantom.labels
    session, organs = start_organs(phantom, 2)
    session.run()
    for organ in organs:
        suggested = suggest_slices(session, organ)
        assert suggested and middle(truth, organ) not in suggested
        assert all((session.labels[max(0, z - 3):z + 4] == organ).any() for z in suggested)
    assert suggest_slices(session, 250) == []


def test_the_first_suggestion_splits_the_longest_run_as_bisection_would() -> None:
    """A uniform tube on slices 0-40 drawn on slice 10: the key that removes the most expected
    error lies inside the long run above the key, near its middle (about 25), not at its far
    end, where one slice is worst but a key helps few others."""
    depth, size = 48, 48
    rng = np.random.default_rng(0)
    hu = np.repeat(rng.normal(0, 60, (size, size)).astype(np.float32)[None], depth, 0) + 40
    yy, xx = np.mgrid[:size, :size]
    tube = (yy - 24) ** 2 + (xx - 24) ** 2 <= 64
    hu[:41, tube] += 150
    propagator = FlowPropagator()
    session = propagator.start(window_volume(hu, propagator.windows))
    session.add_object_mask(10, 1, tube)
    session.run()
    assert (session.labels[:41, 24, 24] == 1).all()
    first = suggest_slices(session, 1)[0]
    assert 19 <= first <= 31, first


@pytest.mark.parametrize("depth", [1, 2, 9, 150])
def test_tent_sums_match_the_sum_over_every_pair_of_slices(depth: int) -> None:
    """The O(D) scores equal the plain (D, D) sum, tents reaching past both ends included."""
    rng = np.random.default_rng(depth)
    half_widths = rng.integers(0, depth + 1, depth)
    weights = rng.random(depth)
    offsets = np.abs(np.arange(depth)[:, None] - np.arange(depth)[None, :])
    expected = (np.maximum(half_widths[None, :] - offsets, 0) * weights[None, :]).sum(1)
    np.testing.assert_allclose(tent_sums(half_widths, weights), expected, atol=1e-9)


@pytest.mark.parametrize("mode", ["per_object", "joint"])
def test_stcn_engine_takes_organ_keys(mode: str) -> None:
    net = make_net(mode)
    session = Propagator(net, feature_dtype=torch.float32).start(volume(8))
    key = np.zeros((48, 64), np.uint8)
    key[10:20, 10:30] = 3
    key[25:35, 10:30] = 7
    session.add_mask(1, key)
    session.add_object_mask(5, 3, key == 3)  # organ 3 only: organ 7 stays propagated on 5
    labels = session.run()
    assert labels.shape == (8, 48, 64) and labels.dtype == np.uint8
    assert (labels[5][key == 3] == 3).all() and np.isfinite(session.slice_uncertainty).all()
    assert len(session.tracks) == 2
