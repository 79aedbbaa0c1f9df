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

import math
import threading
from dataclasses import dataclass, replace

import cv2
import numpy as np

from slicevos.config import check_fields
from slicevos.errors import InputError
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
    worker threads that compute flows ahead of a pass, and the passes that may run at once
    (the flow engine's; ``slicevos.inference.parallel``); ``upsample_below``: slices smaller than
    this (largest side, pixels) are enlarged 2x before the flow is computed (0 = never; the
    measurement behind it: docs/propagation.md); ``variational_alpha``: the smoothness weight
    of DIS's variational refinement (None = the preset's, 20, made for video). Adjacent CT
    slices differ by organ outlines that move unevenly, and a smoother flow carries an organ's
    outline more slowly than it moves: 5 is the default (docs/propagation.md, "Why the
    defaults").
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
    variational_alpha: float | None = 5.0

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
            "variational_alpha": (self.variational_alpha is None
                                  or self.variational_alpha >= 0, "null or a number >= 0"),
        }
        check_fields(self, "flow", checks)


def identity_map(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float32 map of a slice onto itself."""
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    return np.ascontiguousarray(np.stack([xs, ys], axis=-1))


FIXED_SCALE = 128  # int16 units per pixel of a kept flow (1/128 px steps, up to 256 px)


def to_fixed(flow: np.ndarray) -> np.ndarray:
    """A float flow as int16 fixed point, ``FIXED_SCALE`` units per pixel (clipped at 256
    px, more than any flow between adjacent slices): what flow caches keep, as small as
    float16 and composed ~7x faster (cv2 reads it; numpy converts float16 slowly)."""
    return np.clip(np.rint(flow * FIXED_SCALE), -32768, 32767).astype(np.int16)


def compose(previous_map: np.ndarray, flow: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Map of slice ``z`` into the key from the map of its neighbour ``z'`` into the key and
    the flow ``z -> z'`` (float32, or int16 fixed point as caches keep it: ``to_fixed``):
    ``M_z(x) = M_z'(x + F(x))`` (bilinear, edges replicated)."""
    if flow.dtype == np.int16:
        positions = cv2.addWeighted(flow, 1.0 / FIXED_SCALE, grid, 1.0, 0.0, dtype=cv2.CV_32F)
    else:
        positions = grid + flow
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
    def finest_scale(self) -> int | None:
        """DIS's finest pyramid level (0: the size it is given; None: the preset's)."""
        if self.settings.finest_scale is not None:
            return self.settings.finest_scale
        return 0 if max(self.height, self.width) * self.scale <= 256 else None

    @property
    def detail(self) -> float:
        """The size, relative to the slice, of DIS's finest level: its flow is a bilinear
        enlargement of the flow computed there (0.5: half the slice's size)."""
        finest = self.finest_scale
        if finest is None:
            finest = cv2.DISOpticalFlow_create(PRESETS[self.settings.preset]).getFinestScale()
        return self.scale / 2**finest

    def _dis(self) -> cv2.DISOpticalFlow:
        dis = getattr(self._local, "dis", None)
        if dis is None:
            s = self.settings
            dis = cv2.DISOpticalFlow_create(PRESETS[s.preset])
            if s.variational_iterations is not None:
                dis.setVariationalRefinementIterations(s.variational_iterations)
            if self.finest_scale is not None:
                dis.setFinestScale(self.finest_scale)
            if s.patch_size is not None:
                dis.setPatchSize(s.patch_size)
            if s.variational_alpha is not None:
                dis.setVariationalRefinementAlpha(s.variational_alpha)
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


def node_flow_settings(settings: FlowSettings, height: int, width: int, step: int
                       ) -> FlowSettings:
    """Settings whose flow between block means of ``step`` x ``step`` pixels of two (H, W)
    slices is DIS's flow at that level, the one ``SliceFlow(settings, H, W)`` computes and
    enlarges bilinearly (the two agree exactly on a 512 x 512 CT slice): flows at the nodes of
    maps kept every ``step`` pixels, in node units. ``step`` must be a power of two no finer
    than the flow's own detail (:attr:`SliceFlow.detail`)."""
    if step == 1:
        return settings
    flow = SliceFlow(settings, height, width)
    level = math.log2(1 / (flow.detail * step))
    if flow.scale > 1 or level < 0 or level != int(level):
        largest = max(1, 2 ** int(math.log2(1 / flow.detail))) if flow.scale <= 1 else 1
        raise InputError(None, f"flow map_step {step} does not fit {height}x{width} slices, "
                         f"whose flow is computed at {flow.detail:g} times their size "
                         f"(map_step: a power of two up to {largest})",
                         "use map_step null (chosen from the flow) or 1")
    return replace(settings, downscale=1, upsample_below=0, finest_scale=int(level))


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> float32 signed distance (pixels): > 0 inside, < 0 outside, boundary 0."""
    mask8 = mask.astype(np.uint8)
    inside = cv2.distanceTransform(mask8, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - mask8, cv2.DIST_L2, 5)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)
