"""Per-organ keys: a key is (slice, organ). Correcting one organ on a slice leaves the other
organs there propagated; whole-slice keys vouch for every organ; removing a key and
restoring a slice's keys (undo) give back the first result; the STCN engine takes them too."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_propagation_session import make_net, volume  # tests/ is on sys.path

from slicevos.errors import InputError
from slicevos.inference.engines.flow.engine import (
    END_MODEL_KEYS,
    OPINION_GAP,
    FlowConfig,
    FlowPropagator,
)
from slicevos.inference.engines.flow.shapes import OTHER_END_BELOW, model_depths
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


OUTER_REACH = 3  # keys per side in the test below: as many as an end model may pool


def end_depth(truth: np.ndarray, keys: list[int], organ: int, step: int) -> int | None:
    """How many keys the end model beyond the end that ``step`` goes to reads for ``organ``
    (None where the organ is not on the outermost key): the first that hold
    ``end_model_pixels`` of it, of the ``END_MODEL_KEYS`` nearest that end; those no nearer
    it than the other end's outermost key only where the nearer hold too few
    (``OTHER_END_BELOW``)."""
    ordered = sorted(keys, reverse=step > 0)  # from that end inward
    model = ordered[:END_MODEL_KEYS]
    masks = [(truth[z] == organ).astype(np.uint8) for z in model]
    if not masks[0].any():
        return None
    far = sum(abs(z - model[0]) >= abs(z - ordered[-1]) for z in model[1:])
    return model_depths(masks, FlowConfig().end_model_pixels, far)[1]


def outer_reach(truth: np.ndarray, keys: list[int], organ: int, step: int) -> int:
    """How many of the outermost keys the pass beyond the end that ``step`` goes to reads:
    its own and those up to the one its second opinion walks from (the nearest at least
    ``OPINION_GAP`` slices inward; while there is none, every key and one more), and as
    many as the end model pools (:func:`end_depth`); its own alone where the organ is not on
    it (the pass is background throughout)."""
    depth = end_depth(truth, keys, organ, step)
    if depth is None:
        return 1
    ordered = sorted(keys, reverse=step > 0)
    apart = [i for i, z in enumerate(ordered) if abs(z - ordered[0]) >= OPINION_GAP]
    opinion = apart[0] + 1 if apart else len(ordered) + 1
    return max(opinion, depth)


def expected_redone(truth: np.ndarray, before: list[int], keys: list[int], z: int,
                    organ: int) -> set[int]:
    """The slices a new or replaced key ``z`` of ``organ`` (keys ``before`` and after the
    change) redoes: its segments, and a pass beyond an end that reads ``z``, or whose
    outermost key stayed but whose end model now reads other keys."""
    below, above = [k for k in keys if k < z], [k for k in keys if k > z]
    redone = set(range(max(below, default=-1) + 1, min(above, default=len(truth)))) - {z}
    sides = ((-1, below, range(min(keys))), (1, above, range(max(keys) + 1, len(truth))))
    for step, inner, beyond in sides:
        outermost = min if step < 0 else max
        same_end = outermost(before) == outermost(keys)
        was, now = (end_depth(truth, k, organ, step) for k in (before, keys))
        if len(inner) < outer_reach(truth, keys, organ, step) or (same_end and was != now):
            redone |= set(beyond)
    return redone


def ends_left_alone(keys: list[int], z: int, redone: set[int], depth: int) -> int:
    """How many of the two passes beyond the outermost keys a change at ``z`` left alone
    although ``z`` is among the ``OUTER_REACH`` outermost keys of that side (what a fixed
    reach would have redone); judged by the slice just past each outermost key."""
    if not (0 < keys[0] and keys[-1] < depth - 1):
        return 0
    inner_below, inner_above = sum(k < z for k in keys), sum(k > z for k in keys)
    return ((inner_below < OUTER_REACH and keys[0] - 1 not in redone)
            + (inner_above < OUTER_REACH and keys[-1] + 1 not in redone))


def test_corrections_one_at_a_time_give_what_the_same_keys_give_at_once(phantom) -> None:
    """The labels are a function of the keys, not of the order they came in. A pass beyond
    an organ's outermost key reads that key, the keys up to the one its second opinion walks
    from and the keys its end model pools (``outer_reach``), so a change to one of those
    redoes that pass; a key with that many keys on each side redoes only its own segments.
    The last keys: a new outermost key next to the old one (its second opinion then skips
    the old and walks from the one after), that key redrawn, and a key just inward of the
    other end. The result equals a fresh session given every key at once."""
    truth = phantom.labels
    depth = len(truth)
    session, organs = start_organs(phantom, 3)
    session.run()
    skipped = 0  # keys whose side's pass a fixed reach of OUTER_REACH would have redone
    for organ in organs:
        mid = middle(truth, organ)
        assert 0 <= mid - 2 * OUTER_REACH and mid + 2 * OUTER_REACH + 1 < depth
        keys = {mid}
        for z in [mid + 2 * OUTER_REACH] + [z for i in range(1, OUTER_REACH + 1)
                                            for z in (mid - 2 * i, mid + 2 * i)] + [
                mid, mid + 2 * OUTER_REACH + 1, mid + 2 * OUTER_REACH - 2,
                mid - 2 * OUTER_REACH + 1]:
            before = sorted(keys)
            keys.add(z)
            session.add_object_mask(z, organ, truth[z] == organ)  # may be past its end
            redone = {z for z, _ in session.propagate()}
            assert redone == expected_redone(truth, before, sorted(keys), z, organ), (organ, z)
            skipped += ends_left_alone(sorted(keys), z, redone, depth)
    assert skipped  # some organ's end model reads its outermost key alone
    fresh = flow_session(phantom)
    for organ in organs:
        for z in session.organ_keys[organ]:
            fresh.add_object_mask(z, organ, truth[z] == organ)
    np.testing.assert_array_equal(session.labels, fresh.run())


def test_a_second_opinion_skips_a_key_next_to_the_outermost_one(phantom) -> None:
    """A key next to the outermost key walks no slice of its own before the pass beyond does:
    the second opinion of that pass comes from the key after it (``OPINION_GAP``). So
    redrawing that farther key redoes the pass beyond the end, though two keys lie between
    (with ``end_model_pixels`` 0 the end model reads the outermost key alone), and the labels
    equal a fresh session's with the same keys."""
    truth = phantom.labels
    organ = 1
    mid = middle(truth, organ)
    propagator = FlowPropagator(FlowConfig(end_model_pixels=0))
    image = window_volume(phantom.to_volume().hu, propagator.windows)
    session = propagator.start(image)
    keys = (mid, mid + 3, mid + 4)
    for z in keys:
        session.add_object_mask(z, organ, truth[z] == organ)
    session.run()
    smaller = cv2.erode((truth[mid] == organ).astype(np.uint8),
                        np.ones((3, 3), np.uint8)).astype(bool)
    session.add_object_mask(mid, organ, smaller)
    redone = {z for z, _ in session.propagate()}
    assert set(range(mid + 5, len(truth))) <= redone
    fresh = propagator.start(image)
    fresh.add_object_mask(mid, organ, smaller)
    for z in keys[1:]:
        fresh.add_object_mask(z, organ, truth[z] == organ)
    np.testing.assert_array_equal(session.labels, fresh.run())


def disc_volume(radius: float, depth: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A disc of ``radius`` px through every slice of a (depth, 64, 64) noisy volume: (disc
    (64, 64) bool, the flow engine's windowed image)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:64, :64]
    disc = (rows - 32) ** 2 + (cols - 30) ** 2 < radius ** 2
    hu = rng.normal(-80, 15, (depth, 64, 64)).astype(np.float32)
    hu[:, disc] = rng.normal(120, 15, (depth, int(disc.sum())))
    return disc, window_volume(hu, FlowPropagator().windows)


def test_a_key_that_moves_the_halfway_point_redoes_the_pass_beyond_the_other_end() -> None:
    """Keys 5 and 9: the lower end's model would pool 9, the other end's; a disc of 177 px
    holds more than half of ``end_model_pixels`` (256) on its own key, so it reads that key
    alone (``OTHER_END_BELOW``). A key at 12 leaves 9 in the upper half (nearer 12 than 5):
    the pass below 5 is not redone. One at 15 brings 9 into the lower half, which the model
    then reads: that pass is redone. Both times the labels equal a fresh session's."""
    disc, image = disc_volume(7.5)
    assert OTHER_END_BELOW * 256 <= disc.sum() < 256
    propagator = FlowPropagator()
    session = propagator.start(image)
    for z in (5, 9):
        session.add_object_mask(z, 1, disc)
    session.run()
    for z, below_redone in ((12, False), (15, True)):
        session.add_object_mask(z, 1, disc)
        redone = {z for z, _ in session.propagate()}
        assert (set(range(5)) <= redone) is below_redone
        assert not (set(range(5)) & redone) or below_redone
        fresh = propagator.start(image)
        for key in session.organ_keys[1]:
            fresh.add_object_mask(key, 1, disc)
        np.testing.assert_array_equal(session.labels, fresh.run())


def test_the_claim_nearer_its_key_wins_where_two_organs_meet() -> None:
    """One vessel labelled as two objects that meet at slice 8, a label boundary the image
    does not show (lidc's superior vena cava and right brachiocephalic vein): object 1 drawn
    on 2 and 7, object 2 on 8 and 13. Object 1's pass beyond its last key runs on through
    object 2's slices as deep as object 2's own; each track's claim counts ``1 / (1 + d)``,
    ``d`` its slices to its nearest key (``Track.claim_weight``), so each object keeps the
    slices nearer its own keys."""
    disc, image = disc_volume(10)
    session = FlowPropagator().start(image)
    for z in (2, 7):
        session.add_object_mask(z, 1, disc)
    for z in (8, 13):
        session.add_object_mask(z, 2, disc)
    labels = session.run()
    area = int(disc.sum())
    assert ((labels[:8] == 1).sum(axis=(1, 2)) >= 0.95 * area).all()
    assert ((labels[8:] == 2).sum(axis=(1, 2)) >= 0.95 * area).all()


def test_a_pass_that_never_asked_its_second_opinion_ignores_the_next_key(phantom) -> None:
    """An organ running on unchanged to the volume's end (a disc through every slice): the
    pass beyond its upper key never asks its second opinion (walked from the next key
    inward), and its end model reads that key alone, so redrawing the next key inward
    redoes only that key's segments and the pass beyond the lower end. The labels equal a
    fresh session given the same keys."""
    disc, image = disc_volume(14)
    propagator = FlowPropagator()
    session = propagator.start(image)
    for z in (5, 9):
        session.add_object_mask(z, 1, disc)
    session.run()
    smaller = cv2.erode(disc.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    session.add_object_mask(5, 1, smaller)
    assert {z for z, _ in session.propagate()} == set(range(9)) - {5}
    fresh = propagator.start(image)
    fresh.add_object_mask(5, 1, smaller)
    fresh.add_object_mask(9, 1, disc)
    np.testing.assert_array_equal(session.labels, fresh.run())
    assert (session.labels[10:] == 1).sum(axis=(1, 2)).min() > 0.9 * disc.sum()


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
