"""Optical flow between two slices (OpenCV DIS), maps composed from flows, and the signed
distances that get warped: the pieces the flow engine (``slicevos.inference.engines.flow.engine``) and the
flow prior of training clips (``slicevos.data.flow_prior``) share.

Conventions: a *flow* ``F`` (H, W, 2) float, (dx, dy) in pixels, from slice ``a`` to slice
``b`` says that pixel ``x`` of ``a`` shows the tissue at ``x + F(x)`` of ``b``
(``a(x) ~ b(x + F(x))``). A *map* ``M`` (H, W, 2) float32 of slice ``z`` into key slice ``k``
holds, per pixel of ``z``, the absolute (x, y) position in ``k``; ``cv2.remap(key_array, M)``
brings any per-pixel array of the key onto slice ``z``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from slicevos.config import check_fields
from slicevos.preprocessing.padding import upsample_factor

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
           "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@dataclass(frozen=True)
class FlowSettings:
    """How flow between slices is computed.

    ``preset``: DIS preset (ultrafast | fast | medium); ``channel``: index of the windowed
    image's channel the flow sees (0 = the first window, abdomen by default), or -1 for the
    mean of all channels; ``smooth_sigma``: Gaussian blur (pixels) of that channel first (0 =
    none); ``downscale``: compute at 1/downscale size (1 = full size); ``variational_iterations``
    / ``patch_size``: DIS overrides (None = the preset's); ``finest_scale``: the finest
    pyramid level DIS computes (0 = full size; None = 0 for slices of at most 256 pixels,
    where the preset's coarser level loses small organs, else the preset's); ``threads``:
    worker threads that compute flows ahead of a pass; ``upsample_below``: slices smaller than
    this (largest side, pixels) are enlarged 2x before the flow is computed (0 = never; the
    measurement behind it: docs/propagation.md).
    """

    preset: str = "medium"
    channel: int = 0
    smooth_sigma: float = 0.0
    downscale: int = 1
    variational_iterations: int | None = None
    finest_scale: int | None = None
    patch_size: int | None = None
    threads: int = 2
    upsample_below: int = 200

    def __post_init__(self) -> None:
        checks = {
            "preset": (self.preset in PRESETS, f"one of {tuple(PRESETS)}"),
            "channel": (self.channel >= -1, "a channel index >= 0, or -1 (mean)"),
            "smooth_sigma": (self.smooth_sigma >= 0, "a number >= 0"),
            "downscale": (self.downscale >= 1, "an integer >= 1"),
            "variational_iterations": (self.variational_iterations is None
                                       or self.variational_iterations >= 0, "null or >= 0"),
            "finest_scale": (self.finest_scale is None or self.finest_scale >= 0,
                             "null or >= 0"),
            "patch_size": (self.patch_size is None or self.patch_size >= 4, "null or >= 4"),
            "threads": (self.threads >= 1, "an integer >= 1"),
            "upsample_below": (self.upsample_below >= 0, "a number of pixels >= 0"),
        }
        check_fields(self, "flow", checks)


def identity_map(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float32 map of a slice onto itself."""
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    return np.ascontiguousarray(np.stack([xs, ys], axis=-1))


def compose(previous_map: np.ndarray, flow: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Map of slice ``z`` into the key from the map of its neighbour ``z'`` into the key and
    the flow ``z -> z'`` (float32, or float16 as caches keep it): ``M_z(x) = M_z'(x + F(x))``
    (bilinear, edges replicated)."""
    positions = grid + flow  # float32 (a float16 flow is taken as its float32 values)
    return cv2.remap(previous_map, positions, None, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


class SliceFlow:
    """DIS flow between uint8 slices of one size (H, W), with :class:`FlowSettings`' size rules
    (``downscale``, ``upsample_below``, ``finest_scale``). Thread-safe: one DIS object per
    thread (they keep internal buffers)."""

    def __init__(self, settings: FlowSettings, height: int, width: int) -> None:
        self.settings, self.height, self.width = settings, height, width
        self._local = threading.local()

    @property
    def scale(self) -> float:
        """Size factor of the images the flow is computed on."""
        factor = upsample_factor(self.height, self.width, self.settings.upsample_below)
        return float(factor) if factor > 1 else 1.0 / self.settings.downscale

    @property
    def cell(self) -> int:
        """The side (pixels, a power of two) of the finest detail the flow holds: DIS
        estimates it on its ``finest_scale`` pyramid level of the images it is given and
        upsamples it bilinearly to full size (the medium preset: level 1, 2 px cells for
        slices over 256 px). Maps composed on a grid of such cells (``on_grid``) lose
        nothing of it."""
        detail = self.scale / 2 ** self._dis().getFinestScale()
        return max(1, 2 ** int(np.floor(np.log2(1.0 / detail) + 1e-6))) if detail < 1 else 1

    def _dis(self) -> cv2.DISOpticalFlow:
        dis = getattr(self._local, "dis", None)
        if dis is None:
            s = self.settings
            dis = cv2.DISOpticalFlow_create(PRESETS[s.preset])
            if s.variational_iterations is not None:
                dis.setVariationalRefinementIterations(s.variational_iterations)
            if s.finest_scale is not None:
                dis.setFinestScale(s.finest_scale)
            elif max(self.height, self.width) * self.scale <= 256:
                dis.setFinestScale(0)
            if s.patch_size is not None:
                dis.setPatchSize(s.patch_size)
            self._local.dis = dis
        return dis

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Flow (H, W, 2) float32 from uint8 slice ``src`` (H, W) to ``dst`` (full size)."""
        scale = self.scale
        if scale != 1:
            size = (max(8, round(self.width * scale)), max(8, round(self.height * scale)))
            method = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            src = cv2.resize(src, size, interpolation=method)
            dst = cv2.resize(dst, size, interpolation=method)
        flow = self._dis().calc(np.ascontiguousarray(src), np.ascontiguousarray(dst), None)
        if scale != 1:
            factor = np.array([self.width / src.shape[1], self.height / src.shape[0]],
                              np.float32)
            flow = cv2.resize(flow, (self.width, self.height),
                              interpolation=cv2.INTER_LINEAR) * factor
        return flow


def on_grid(flow: np.ndarray, cell: int) -> np.ndarray:
    """A full-size flow (H, W, 2) on a grid of ``cell`` x ``cell`` pixel cells: (ceil(H /
    cell), ceil(W / cell), 2), each cell's mean displacement in cells (the flow at the cell's
    centre where it is linear there). Edges are replicated to whole cells."""
    if cell == 1:
        return flow
    height, width = flow.shape[:2]
    pad_rows, pad_cols = -height % cell, -width % cell
    if pad_rows or pad_cols:
        flow = cv2.copyMakeBorder(flow, 0, pad_rows, 0, pad_cols, cv2.BORDER_REPLICATE)
    size = (flow.shape[1] // cell, flow.shape[0] // cell)
    return cv2.resize(flow, size, interpolation=cv2.INTER_AREA) * np.float32(1.0 / cell)


def cell_centres(rows: int, cols: int, cell: int) -> np.ndarray:
    """(rows, cols, 2) float32: the (x, y) pixel position of each cell's centre on a grid of
    ``cell`` px cells (``cell`` 1: ``identity_map``)."""
    return identity_map(rows, cols) * np.float32(cell) + np.float32((cell - 1) / 2)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> float32 signed distance (pixels): > 0 inside, < 0 outside, boundary 0."""
    mask8 = mask.astype(np.uint8)
    inside = cv2.distanceTransform(mask8, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - mask8, cv2.DIST_L2, 5)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)
