"""The optical-flow propagation engine behind the session: quality against nearest-key copy
(phantoms always, a real volume when ../shared is there), segment-local re-propagation, any
label ids and object counts, edge cases of keys and slice shapes, determinism whatever the
thread count, box scores against their dense form, and the bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slicevos.benchmarks.baselines import nearest_key_copy
from slicevos.data.optical_flow import FIXED_SCALE
from slicevos.errors import InputError
from slicevos.inference.box_scores import BoxScores, over, union
from slicevos.inference.engines import build_propagator
from slicevos.inference.engines.flow.engine import FlowConfig, FlowPropagator
from slicevos.inference.engines.flow.field import (
    FlowFields,
    FlowSettings,
    RegionMap,
    compose,
    identity_map,
    to_fixed,
)
from slicevos.inference.engines.flow.shapes import key_shapes, unmatched_parts
from slicevos.inference.session import fuse_directions, score_channels
from slicevos.io import FLARE22, load_labels, load_volume
from slicevos.metrics.overlap import dice
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.preprocessing.windowing import window_volume


def propagate(hu: np.ndarray, keys: dict[int, np.ndarray],
              config: FlowConfig | None = None) -> np.ndarray:
    propagator = FlowPropagator(config)
    session = propagator.start(window_volume(hu, propagator.windows))
    for z, labels in keys.items():
        session.add_mask(z, labels)
    return session.run()


def mean_dice(truth: np.ndarray, pred: np.ndarray, keys: list[int]) -> float:
    others = [z for z in range(len(truth)) if z not in keys]
    ids = [i for i in np.unique(truth[others]) if i]
    return float(np.mean([dice(truth[others] == i, pred[others] == i) for i in ids]))


@pytest.mark.parametrize("seed", [1000, 1001])
def test_flow_beats_nearest_key_copy_on_a_phantom(seed: int) -> None:
    phantom = make_phantom(seed, PhantomConfig(shape=(48, 96, 96)))
    keys = list(range(0, 48, 10))
    key_masks = {z: phantom.labels[z] for z in keys}
    flow = mean_dice(phantom.labels, propagate(phantom.hu, key_masks), keys)
    nearest = mean_dice(phantom.labels, nearest_key_copy(key_masks, 48), keys)
    assert flow > nearest + 0.01, (flow, nearest)


@pytest.mark.real
def test_flow_beats_nearest_key_copy_on_real_ct(real_data) -> None:
    volume = load_volume(real_data / "example_ct_full112" / "ct.nii.gz")
    truth, _ = load_labels(real_data / "example_ct_full112" / "label_flare.nii.gz",
                           reference=volume, schema=FLARE22)
    keys = list(range(0, len(truth), 10))
    key_masks = {z: truth[z] for z in keys}
    flow = mean_dice(truth, propagate(volume.hu, key_masks), keys)
    nearest = mean_dice(truth, nearest_key_copy(key_masks, len(truth)), keys)
    assert flow > nearest + 0.03, (flow, nearest)


def moving_disk_volume(depth: int = 12, height: int = 40, width: int = 56,
                       ids: tuple[int, ...] = (7,)) -> tuple[np.ndarray, np.ndarray]:
    """HU volume with bright disks drifting right one pixel per slice, and their labels."""
    yy, xx = np.mgrid[:height, :width]
    hu = np.full((depth, height, width), -100.0, np.float32)
    labels = np.zeros((depth, height, width), np.uint8)
    for z in range(depth):
        for i, object_id in enumerate(ids):
            cy, cx = 8 + (i % 3) * 12, 10 + z + (i // 3) * 14
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
            hu[z][disk] = 150.0 + 20 * (i % 4)
            labels[z][disk] = object_id
    return hu, labels


def test_flow_follows_a_moving_object_and_keeps_keys_exact() -> None:
    hu, labels = moving_disk_volume()
    pred = propagate(hu, {0: labels[0], 11: labels[11]})
    np.testing.assert_array_equal(pred[[0, 11]], labels[[0, 11]])
    assert pred.dtype == np.uint8 and pred.shape == labels.shape
    assert mean_dice(labels, pred, [0, 11]) > 0.8


def test_the_default_flow_follows_an_outline_that_widens_from_slice_to_slice() -> None:
    """A textured disk whose radius grows 1.5 px a slice (10 -> 26.5), drawn on slice 0: DIS's
    preset smoothness (20) carries the outline more slowly than it moves, the default (5)
    follows it (docs/propagation.md, "Why the defaults")."""
    depth, size = 12, 96
    texture = np.random.default_rng(0).normal(0, 15, (size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    disks = np.stack([(yy - 48) ** 2 + (xx - 48) ** 2 <= (10 + 1.5 * z) ** 2
                      for z in range(depth)])
    hu = np.where(disks, 60.0, -80.0).astype(np.float32) + texture
    last = {}
    for alpha in (None, 5.0):
        config = FlowConfig(flow=FlowSettings(variational_alpha=alpha), end_rule="none")
        pred = propagate(hu, {0: disks[0].astype(np.uint8)}, config)
        last[alpha] = dice(disks[-1], pred[-1] == 1)
    assert FlowSettings().variational_alpha == 5.0
    assert last[5.0] > 0.95 and last[5.0] > last[None] + 0.05, last


def test_repropagation_touches_only_the_segments_next_to_a_corrected_key() -> None:
    hu, labels = moving_disk_volume(depth=16)
    propagator = FlowPropagator()
    session = propagator.start(window_volume(hu, propagator.windows))
    for z in (0, 5, 10, 15):
        session.add_mask(z, labels[z])
    before = session.run().copy()
    flows = session.stats.flow_fields
    corrected = labels[10].copy()
    corrected[:, :4] = 7  # a visible change on key 10
    session.add_mask(10, corrected)
    redone = sorted(z for z, _ in session.propagate())
    assert redone == [6, 7, 8, 9, 11, 12, 13, 14]
    assert session.stats.flow_fields - flows == 2 * len(redone)  # two directions each
    np.testing.assert_array_equal(session.labels[:6], before[:6])
    np.testing.assert_array_equal(session.labels[15:], before[15:])


def test_any_label_ids_and_many_objects() -> None:
    ids = tuple(range(60, 60 + 40 * 5, 5))[:12]  # 12 objects with ids far beyond FLARE's
    hu, labels = moving_disk_volume(depth=10, height=48, width=96, ids=ids)
    pred = propagate(hu, {0: labels[0], 9: labels[9]})
    assert set(np.unique(pred)) <= {0, *ids}
    assert set(np.unique(pred[4])) == {0, *ids}


def test_non_square_slices_one_slice_segments_and_keys_on_the_edges() -> None:
    hu, labels = moving_disk_volume(depth=7, height=30, width=70)
    keys = {0: labels[0], 2: labels[2], 3: labels[3], 6: labels[6]}
    propagator = FlowPropagator()
    session = propagator.start(window_volume(hu, propagator.windows))
    for z, mask in keys.items():
        session.add_mask(z, mask)
    done = sorted(z for z, _ in session.propagate())
    assert done == [1, 4, 5]
    assert np.isfinite(session.slice_uncertainty).all()
    assert ((session.slice_uncertainty >= 0) & (session.slice_uncertainty <= 1)).all()
    assert (session.slice_uncertainty[list(keys)] == 0).all()
    assert (session.labels[1] == 7).sum() > 0


def test_organ_ends_beyond_the_outermost_key_with_the_intensity_rule() -> None:
    """A bright disk that stops at slice 5: from a key on slice 2 the flow alone carries it to
    the volume's end; the intensity rule ends it where the image no longer shows it."""
    hu, labels = moving_disk_volume(depth=12)
    hu[6:] = -100.0
    labels[6:] = 0
    keys = {2: labels[2]}
    plain = propagate(hu, keys, FlowConfig(end_rule="none"))
    ended = propagate(hu, keys, FlowConfig(end_rule="intensity"))
    assert (plain[8:] == 7).any()
    assert not (ended[8:] == 7).any()
    assert (ended[3:6] == 7).sum() > 0.5 * (labels[3:6] == 7).sum()


def test_a_thin_vessel_ends_with_the_intensity_rule_too() -> None:
    """A vessel of radius 2 px (the aorta or an adrenal on a 3 mm grid) in fat, bright on
    slices 0-19: drawn on slice 10 it must end near slice 20 as a wide organ does. The
    intensity model's blur, were it wider than the vessel, would mix it with the fat even on
    its own key, and an end rule that sees nothing there never ends it."""
    depth, size = 40, 64
    rng = np.random.default_rng(1)
    hu = rng.normal(-100, 15, (depth, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    vessel = (yy - 32) ** 2 + (xx - 30) ** 2 <= 4
    hu[:20, vessel] = rng.normal(180, 15, (20, int(vessel.sum())))
    labels = np.where(vessel, 5, 0).astype(np.uint8)
    out = propagate(hu, {10: labels}, FlowConfig(intensity_sigma=2.0))
    found = np.flatnonzero((out == 5).any(axis=(1, 2)))
    assert found[-1] <= 23, found
    assert (out[11:19] == 5).sum() > 0.5 * vessel.sum() * 8


def test_an_organ_ends_where_it_runs_into_what_else_its_key_slice_shows() -> None:
    """Soft tissue in fat, with bone elsewhere on every slice; past slice 20 the organ's place
    turns to bone with a speckle of soft tissue (the stomach of a chest CT running into the
    spine and the contrast-filled heart). Seen only against the fat around it, bone is no
    evidence either way and the speckle keeps the organ going to the volume's end; the model
    that also knows the rest of the key slice ends it there."""
    depth, size = 40, 64
    rng = np.random.default_rng(3)
    hu = rng.normal(-100, 15, (depth, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    organ = (yy - 32) ** 2 + (xx - 24) ** 2 <= 36
    hu[:, 4:16, 44:60] = 700.0  # bone, on every slice
    hu[:, organ] = rng.normal(60, 10, (depth, int(organ.sum())))
    speckle = rng.random((depth - 20, int(organ.sum()))) < 0.25
    hu[20:, organ] = np.where(speckle, hu[20:, organ], 700.0)
    labels = np.where(organ, 5, 0).astype(np.uint8)
    last = {}
    for context in (False, True):
        out = propagate(hu, {10: labels}, FlowConfig(intensity_context=context))
        last[context] = int(np.flatnonzero((out == 5).any(axis=(1, 2)))[-1])
    assert last[False] == depth - 1
    assert last[True] <= 22, last
    assert FlowConfig().intensity_context


def test_a_dip_shorter_than_the_patience_does_not_end_an_organ() -> None:
    """A bright tube, drawn on slice 30, looks like fat on slices 20-21 only and ends below
    slice 8. With ``end_patience`` 3 it crosses the two-slice dip and ends at slice 8 (the
    first of its low slices); with 1 it ends for good at the dip."""
    depth, size = 40, 64
    rng = np.random.default_rng(2)
    hu = rng.normal(-100, 15, (depth, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    tube = (yy - 32) ** 2 + (xx - 30) ** 2 <= 25
    hu[8:, tube] = rng.normal(180, 15, (depth - 8, int(tube.sum())))
    hu[20:22, tube] = -100.0
    labels = np.where(tube, 5, 0).astype(np.uint8)
    first = {}
    for patience in (1, 3):
        out = propagate(hu, {30: labels}, FlowConfig(end_patience=patience))
        first[patience] = int(np.flatnonzero((out == 5).any(axis=(1, 2)))[0])
    assert first[1] >= 21, first
    assert 7 <= first[3] <= 9, first


def test_the_same_labels_with_one_or_two_flow_threads() -> None:
    phantom = make_phantom(3, PhantomConfig(shape=(20, 64, 64)))
    keys = {z: phantom.labels[z] for z in (2, 12)}
    results = [propagate(phantom.hu, keys, FlowConfig(flow=FlowSettings(threads=t)))
               for t in (1, 2)]
    np.testing.assert_array_equal(*results)


def test_box_scores_match_their_dense_form() -> None:
    rng = np.random.default_rng(0)
    shape = (20, 30)

    def random_scores() -> BoxScores:
        scores = BoxScores(shape, np.array([0, -4, -3, -5], np.float32))
        for channel in (1, 3):
            top, left = rng.integers(0, 10, 2)
            box = (slice(top, top + 8), slice(left, left + 12))
            scores.boxes[channel] = box, rng.normal(0, 3, (8, 12)).astype(np.float32)
        return scores

    first, second = random_scores(), random_scores()
    np.testing.assert_array_equal(first.argmax(), first.dense().numpy().argmax(0))
    weight = rng.uniform(0.2, 0.8, shape).astype(np.float32)
    blended = fuse_directions(first, second, 3, 1, 5, weight, 1 - weight)
    dense = fuse_directions(first.dense(), second.dense(), 3, 1, 5, weight, 1 - weight)
    np.testing.assert_array_equal(score_channels(blended), score_channels(dense))


def test_scores_and_confidences_over_a_box_match_the_whole_slice() -> None:
    """What a track computes over the boxes only (``top(box)``, confidences kept over a
    region, 1 outside it) is what the whole slice gives there, and background elsewhere."""
    rng = np.random.default_rng(1)
    shape = (40, 50)

    def scores_in(top: int, left: int) -> BoxScores:
        scores = BoxScores(shape, np.array([0, -4, -3], np.float32),
                           scale=np.array([1, 2, 3], np.float32))
        for channel in (1, 2):
            box = (slice(top + channel, top + channel + 9), slice(left, left + 11))
            scores.boxes[channel] = box, rng.normal(0, 3, (9, 11)).astype(np.float32)
        return scores

    first, second = scores_in(5, 8), scores_in(14, 20)
    extent = union(first.extent(), second.extent())
    assert extent == (slice(6, 25), slice(8, 31))
    labels, best = first.top()
    crop_labels, crop_best = first.top(extent)
    np.testing.assert_array_equal(crop_labels, labels[extent])
    np.testing.assert_array_equal(crop_best, best[extent])
    outside = np.ones(shape, bool)
    outside[extent] = False
    assert not labels[outside].any()
    region = (slice(2, 30), slice(4, 40))  # holds every box
    confidence = [np.ones(shape, np.float32) for _ in range(2)]
    for c in confidence:
        c[region] = rng.uniform(0.05, 1, (28, 36))
    whole = fuse_directions(first, second, 3, 1, 5, *confidence)
    boxed = fuse_directions(first, second, 3, 1, 5, confidence[0][region],
                            confidence[1][region], region, region)
    for c in range(3):
        np.testing.assert_array_equal(boxed.channel(c), whole.channel(c))
    partial = (slice(10, 20), slice(0, 50))  # cuts the boxes: 1 outside it
    cut = [np.where(np.isin(np.arange(shape[0]), range(10, 20))[:, None], c, 1).astype(
        np.float32) for c in confidence]
    np.testing.assert_allclose(
        fuse_directions(first, second, 3, 1, 5, confidence[0][partial],
                        confidence[1][partial], partial, partial).channel(1),
        fuse_directions(first, second, 3, 1, 5, *cut).channel(1))
    np.testing.assert_array_equal(over(best, None, extent, 0.0), best[extent])


def test_compose_takes_fixed_point_flows_as_their_values() -> None:
    """A cache keeps flows as int16 fixed point (``to_fixed``: 1/128 px steps); composed,
    they give exactly what their float values give."""
    rng = np.random.default_rng(2)
    grid = identity_map(30, 40)
    previous = grid + rng.normal(0, 2, grid.shape).astype(np.float32)
    fixed = to_fixed(rng.normal(0, 3, grid.shape).astype(np.float32))
    assert fixed.dtype == np.int16
    values = fixed.astype(np.float32) / FIXED_SCALE
    np.testing.assert_array_equal(compose(previous, fixed[5:25, 3:33], grid[:20, :30]),
                                  compose(previous, values[5:25, 3:33], grid[:20, :30]))
    assert to_fixed(np.array([1000.0, -1000.0, 0.3])).tolist() == [32767, -32768, 38]


@pytest.mark.parametrize("threads", [1, 2])
def test_flows_computed_ahead_fill_the_cache_without_dropping_any(threads: int) -> None:
    import threading

    phantom = make_phantom(3, PhantomConfig(shape=(8, 48, 48)))
    stack = np.ascontiguousarray(window_volume(phantom.hu, FlowPropagator().windows)[:, 0])
    settings = FlowSettings(threads=threads)
    one_flow_mb = 48 * 48 * 2 * 2 / 2**20
    flows = FlowFields(stack, settings, cache_mb=10.5 * one_flow_mb)
    used = flows.flow(3, 2)
    assert flows.warm(threading.Event()) == 9  # room for 10, one kept already
    assert len(flows._kept) == 10 and (3, 2) in flows._kept and flows.computed == 10
    reference = FlowFields(stack, settings)
    for pair in list(flows._kept):
        np.testing.assert_array_equal(flows.flow(*pair), to_fixed(reference.flow(*pair)))
    assert flows.computed == 10  # every one came from the cache
    np.testing.assert_array_equal(flows.flow(3, 2), used)  # kept as it was handed out
    stopped = threading.Event()
    stopped.set()
    assert FlowFields(stack, settings, cache_mb=1).warm(stopped) == 0
    assert FlowFields(stack, settings).warm(threading.Event()) == 0  # nothing kept: no cache


def test_a_nested_channel_wins_wherever_it_is_positive_and_survives_blending() -> None:
    shape = (10, 10)
    host = np.full(shape, 20.0, np.float32)  # deep everywhere: wins any plain argmax
    lesion = np.full(shape, -1.0, np.float32)
    lesion[4:6, 4:6] = 0.5
    scores = BoxScores(shape, np.array([0, -4, -4], np.float32),
                       {1: ((slice(0, 10), slice(0, 10)), host),
                        2: ((slice(0, 10), slice(0, 10)), lesion)},
                       scale=np.ones(3, np.float32))
    assert (scores.argmax()[4:6, 4:6] == 1).all()  # not nested: the host's depth wins
    nested = BoxScores(scores.shape, scores.fill, scores.boxes, scores.scale, frozenset({2}))
    expected = np.ones(shape, np.int64)
    expected[4:6, 4:6] = 2
    np.testing.assert_array_equal(nested.argmax(), expected)
    np.testing.assert_array_equal(nested.blend(nested, 0.5).argmax(), expected)


def test_parts_are_matched_across_keys_by_their_own_radius() -> None:
    """A key with a large lesion and a small one far from it; the other key has the large
    one moved by 3 px: the large one is matched, the small one is not; against an absent
    object, every part is unmatched. Part radii and centroids are each part's own."""
    size = 64
    labels = np.zeros((size, size), np.uint8)
    labels[_disk(size, 20, 20, 8)] = 14
    labels[_disk(size, 48, 48, 2)] = 14
    shape = key_shapes(labels, clip=24.0)[14]
    parts = shape.parts
    assert len(parts) == 2
    big = int(np.argmax(parts.radii))
    assert abs(parts.radii[big] - 8) < 1 and parts.radii[1 - big] < 3
    centre = parts.centres[big] + [shape.left, shape.top]
    np.testing.assert_allclose(centre, [20, 20], atol=0.5)
    other = _disk(size, 23, 20, 8)
    unmatched = unmatched_parts(shape, other)
    assert not unmatched[big] and unmatched[1 - big]
    assert unmatched_parts(shape, None).all()


def test_an_organ_holds_the_lesion_in_its_hole_on_the_key() -> None:
    size = 64
    labels = np.zeros((size, size), np.uint8)
    labels[_disk(size, 32, 32, 20)] = 1
    labels[_disk(size, 32, 32, 4)] = 14  # in the liver
    labels[_disk(size, 32, 56, 3)] = 2  # beside it, not held
    shapes = key_shapes(labels, clip=24.0)
    assert shapes[1].holds == frozenset({14})
    assert shapes[14].holds == frozenset() and shapes[2].holds == frozenset()
    inside = shapes[1].distance[32 - shapes[1].top, 32 - shapes[1].left]
    assert inside > 4  # the hole counts as inside the liver


def test_a_region_map_composes_as_the_whole_slice_does_inside_its_region() -> None:
    """Five smooth flows composed over a box (``RegionMap``) agree with the whole-slice
    composition inside the box, away from its edges, to a hundredth of a pixel; a frozen map
    stays as it was while the live one goes on."""
    height, width = 80, 96
    grid = identity_map(height, width)
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    whole = grid
    box = (slice(20, 60), slice(16, 80))
    region = RegionMap(grid, box, identity_map(40, 64))
    for k in range(5):
        flow = np.stack([1.5 * np.sin(ys / 17 + k), 1.0 * np.cos(xs / 23 - k)], -1)
        flow = flow.astype(np.float32)
        whole = compose(whole, flow, grid)
        region.step(flow)
    inner = (slice(32, 48), slice(28, 68))
    np.testing.assert_allclose(region[inner], whole[inner], atol=0.01)
    assert region.shift(inner) == pytest.approx(
        np.abs(whole[32:48:4, 28:68:4] - grid[32:48:4, 28:68:4]).max(), abs=0.01)
    assert region.clamp((slice(0, 30), slice(70, 200))) == (slice(20, 30), slice(70, 80))
    frozen = region.frozen()
    region.step(np.ones_like(flow))
    np.testing.assert_allclose(frozen[inner], whole[inner], atol=0.01)
    assert not np.allclose(region[inner], frozen[inner], atol=0.1)


def test_bad_input_errors() -> None:
    hu, labels = moving_disk_volume(depth=6)
    propagator = FlowPropagator()
    session = propagator.start(window_volume(hu, propagator.windows))
    with pytest.raises(InputError, match="no key slice"):
        session.run()
    with pytest.raises(InputError, match="shape"):
        session.add_mask(1, labels[1][:, :10])
    with pytest.raises(InputError, match="outside the volume"):
        session.add_mask(6, labels[0])
    with pytest.raises(InputError, match="uint8 volume"):
        propagator.start(np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="takes no checkpoint"):
        build_propagator("flow", "some.pt")
    with pytest.raises(InputError, match="needs a propagation checkpoint"):
        build_propagator("stcn")
    with pytest.raises(InputError, match="unknown propagation engine"):
        build_propagator("magic")
    with pytest.raises(InputError, match="end_patience"):
        FlowConfig(end_patience=0)
    with pytest.raises(InputError, match="intensity_context"):
        FlowConfig(intensity_context=0.5)
    with pytest.raises(InputError, match="variational_alpha"):
        FlowSettings(variational_alpha=-1.0)


def test_semi_automatic_pipeline_with_flow_checks_keys() -> None:
    from slicevos.inference.pipeline import VolumePipeline
    from slicevos.io.volume import Geometry, Volume

    hu, labels = moving_disk_volume(depth=8)
    depth, height, width = hu.shape
    volume = Volume(hu, Geometry(np.eye(4), (width, height, depth)))
    pipeline = VolumePipeline.from_checkpoints(None, schema=FLARE22)
    assert pipeline.propagator.name == "flow"
    result = pipeline.run(volume, keys={0: np.where(labels[0] > 0, 1, 0).astype(np.uint8),
                                        7: np.where(labels[7] > 0, 1, 0).astype(np.uint8)})
    assert result.labels.shape == hu.shape and (result.labels[3] == 1).any()
    with pytest.raises(InputError, match="does not have"):
        pipeline.run(volume, keys={0: np.full(hu.shape[1:], 20, np.uint8)})
    with pytest.raises(InputError, match="does not fit"):
        pipeline.run(volume, keys={0: labels[0][:, :5]})


@pytest.mark.parametrize("mode", ["per_object", "joint"])
def test_fused_engine_mixes_a_network_with_flow(mode: str) -> None:
    from slicevos.inference.engines import FusedPropagator
    from slicevos.inference.engines.stcn.engine import Propagator
    from slicevos.models.propagation import PropagationModelConfig, PropagationNet

    torch.manual_seed(0)
    net = PropagationNet(PropagationModelConfig(
        key_backbone="mobilenetv3_small_050", value_backbone="mobilenetv3_small_050",
        key_dim=16, value_dim=32, value_fuser_blocks=1, decoder_channels=(32, 16, 16),
        in_channels=3, object_mode=mode, num_classes=10))
    flow = FlowPropagator()
    fused = FusedPropagator(Propagator(net, feature_dtype=torch.float32), flow, flow.windows)
    hu, labels = moving_disk_volume(depth=6, height=32, width=48)
    session = fused.start(window_volume(hu, flow.windows))
    session.add_mask(0, labels[0])
    session.add_mask(5, labels[5])
    out = session.run()
    assert out.shape == labels.shape and set(np.unique(out)) <= set(range(10))
    assert np.isfinite(session.slice_uncertainty).all()


def _static_volume(depth: int = 21, size: int = 64) -> np.ndarray:
    """A still, textured HU volume: flow is near identity, so only the shapes decide."""
    rng = np.random.default_rng(0)
    texture = rng.normal(0, 60, (size, size)).astype(np.float32)
    return np.repeat(texture[None], depth, axis=0) + 40.0


def _disk(size: int, cy: int, cx: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


@pytest.mark.parametrize("outside_depth", [0.3, None])
@pytest.mark.parametrize("end_profile", ["taper", "ellipse"])
def test_a_lesion_far_from_the_other_keys_lesions_fades_like_an_absent_one(
        outside_depth: float | None, end_profile: str) -> None:
    """One class (a tumor) with a lesion at P on key 0 and another at Q, far away, on key 20:
    neither has a counterpart on the other key, so each fades as an object on one key only
    does, whatever the floor of the distances: there next to its key, smaller halfway, gone
    past 1 / 1.3 of the way."""
    hu, size = _static_volume(), 64
    first, last = np.zeros((size, size), np.uint8), np.zeros((size, size), np.uint8)
    at_p, at_q = _disk(size, 16, 16, 6), _disk(size, 48, 48, 6)
    first[at_p] = 14
    last[at_q] = 14
    labels = propagate(hu, {0: first, 20: last},
                       FlowConfig(outside_depth=outside_depth, end_profile=end_profile,
                                  use_confidence=False))
    for z, near in ((2, at_p), (18, at_q)):
        assert (labels[z][near] == 14).mean() > 0.8
    for z, near in ((10, at_p), (10, at_q)):
        area = int((labels[z][near] == 14).sum())
        assert 0.2 * near.sum() < area < 0.9 * near.sum()
    assert not (labels[17][at_p] == 14).any() and not (labels[3][at_q] == 14).any()


def test_a_small_lesion_inside_its_host_is_not_swallowed_by_the_host() -> None:
    """A lesion inside a liver on key 0 only: next to its key it stays a lesion, because the
    argmax compares depths relative to each object's size, not the liver's larger depth."""
    hu, size = _static_volume(), 64
    liver = _disk(size, 32, 32, 24)
    lesion = _disk(size, 32, 32, 3)
    first = np.where(liver, 1, 0).astype(np.uint8)
    first[lesion] = 14
    last = np.where(liver, 1, 0).astype(np.uint8)
    labels = propagate(hu, {0: first, 20: last}, FlowConfig(use_confidence=False))
    assert (labels[1][lesion] == 14).mean() > 0.5
    assert (labels[19][lesion] == 1).all()  # near the key without it, the host again


def test_a_small_lesion_in_its_host_fades_by_its_own_size_and_the_host_closes_over_it() -> None:
    """A 2.5-px lesion in a liver on key 0, the liver alone on key 10 and on key 20 a lesion
    elsewhere: the lesion keeps most of its area for the first slices (it fades by its own
    radius, not by the host's depth nor the far lesion's size), and every pixel it leaves is
    liver, never background (the liver counts it as inside on key 0)."""
    hu, size = _static_volume(), 64
    liver = _disk(size, 32, 32, 24)
    lesion, far = _disk(size, 26, 26, 2.5), _disk(size, 40, 40, 4)
    first = np.where(liver, 1, 0).astype(np.uint8)
    first[lesion] = 14
    last = np.where(liver, 1, 0).astype(np.uint8)
    last[far] = 14
    labels = propagate(hu, {0: first, 10: np.where(liver, 1, 0).astype(np.uint8), 20: last},
                       FlowConfig(use_confidence=False))
    assert (labels[1][lesion] == 14).mean() > 0.7
    assert (labels[3][lesion] == 14).mean() > 0.3
    assert not (labels[9][lesion] == 14).any()
    assert (labels[1:10][:, liver] != 0).all()
