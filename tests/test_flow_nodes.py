"""The flow engine's maps kept at nodes every 2nd pixel where DIS's flow has no finer detail
(512 x 512 CT: its finest level is half the slice's size): the flow at the nodes is DIS's
own, composed maps agree with those composed at every pixel, and propagation gives the
same labels; a step the flow does not allow is refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from slicevos.data.optical_flow import FlowSettings, SliceFlow, compose, node_flow_settings
from slicevos.errors import InputError
from slicevos.inference.engines.flow.engine import FlowConfig, FlowPropagator, map_step
from slicevos.inference.engines.flow.field import RegionMap, block_mean, identity_map, node_grid
from slicevos.metrics.overlap import dice
from slicevos.preprocessing.windowing import window_volume


def _textured(size: int, seed: int = 0) -> np.ndarray:
    texture = np.random.default_rng(seed).normal(0, 1, (size // 8, size // 8))
    return cv2.resize(texture.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)


def test_the_flow_at_the_nodes_is_the_flow_dis_enlarges() -> None:
    size = 320  # above 256: DIS's finest level is the preset's, half the slice's size
    image = np.clip(128 + 40 * _textured(size), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    moved = cv2.remap(image, xx + 2 * np.sin(yy / 40), yy + 1.5 * np.cos(xx / 50),
                      cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    settings = FlowSettings()
    assert map_step(FlowConfig(), size, size) == 2
    assert map_step(FlowConfig(), 256, 256) == 1  # DIS works at full size there
    assert map_step(FlowConfig(), 120, 100) == 1  # small slices are enlarged first
    assert map_step(FlowConfig(map_step=1), size, size) == 1
    full = SliceFlow(settings, size, size)(image, moved)
    nodes = SliceFlow(node_flow_settings(settings, size, size, 2), size // 2, size // 2)(
        block_mean(image, 2), block_mean(moved, 2))
    enlarged = cv2.resize(nodes, (size, size), interpolation=cv2.INTER_LINEAR) * 2
    np.testing.assert_allclose(enlarged, full, atol=1e-4)
    assert np.abs(full).mean() > 0.5  # a real flow, not zeros


def test_a_map_kept_at_nodes_composes_as_one_kept_at_every_pixel() -> None:
    """Five smooth flows given at the nodes (the pixels' flow is their bilinear
    enlargement): the map composed at the nodes of a box agrees with the whole slice's map
    composed at every pixel, inside the box away from its edges, to a tenth of a pixel;
    relative positions and the largest shift agree too."""
    height, width, step = 80, 96, 2
    ys, xs = np.mgrid[:height // step, :width // step].astype(np.float32)
    pixels_grid = identity_map(height, width)
    whole = pixels_grid
    box = (slice(20, 60), slice(16, 80))
    region = RegionMap(node_grid(height, width, step), box, identity_map(20, 32), step)
    for k in range(5):
        node_flow = np.stack([0.8 * np.sin(ys / 9 + k), 0.5 * np.cos(xs / 11 - k)], -1)
        node_flow = node_flow.astype(np.float32)
        pixel_flow = cv2.resize(node_flow, (width, height), interpolation=cv2.INTER_LINEAR)
        whole = compose(whole, pixel_flow * step, pixels_grid)
        region.step(node_flow)
    inner = (slice(30, 50), slice(27, 69))
    np.testing.assert_allclose(region[inner], whole[inner], atol=0.1)
    np.testing.assert_allclose(region.relative(inner, (5, 7)), whole[inner] - [5, 7],
                               atol=0.1)
    assert region.shift(inner) == pytest.approx(
        np.abs(whole[inner] - pixels_grid[inner]).max(), abs=0.3)
    assert region.cover((slice(20, 60), slice(16, 80))) == (slice(10, 30), slice(8, 40))


def test_maps_at_nodes_propagate_the_labels_maps_at_pixels_do() -> None:
    """A textured disk on 320 x 320 slices that widens 1.5 px a slice and drifts 1 px,
    drawn on slice 0: maps at nodes (the default there) and at every pixel both follow it,
    and agree."""
    depth, size = 10, 320
    texture = 15 * _textured(size, 1)
    yy, xx = np.mgrid[:size, :size]
    disks = np.stack([(yy - 160) ** 2 + (xx - 140 - z) ** 2 <= (40 + 1.5 * z) ** 2
                      for z in range(depth)])
    hu = np.where(disks, 60.0, -80.0).astype(np.float32) + texture
    labels = {}
    for step in (None, 1):
        propagator = FlowPropagator(FlowConfig(end_rule="none", map_step=step))
        session = propagator.start(window_volume(hu, propagator.windows))
        session.add_mask(0, disks[0].astype(np.uint8))
        labels[step] = session.run() == 1
    for step, found in labels.items():
        assert dice(disks[-1], found[-1]) > 0.95, step
    assert dice(labels[None], labels[1]) > 0.99


def test_a_map_step_the_flow_does_not_allow_is_refused() -> None:
    with pytest.raises(InputError, match="map_step"):
        FlowConfig(map_step=0)
    hu = np.zeros((3, 320, 320), np.float32)
    propagator = FlowPropagator(FlowConfig(map_step=4))  # finer than DIS's half-size level
    with pytest.raises(InputError, match="map_step 4 does not fit 320x320"):
        propagator.start(window_volume(hu, propagator.windows))
