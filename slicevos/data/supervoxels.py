"""Self-supervised training objects for the propagation module: 3D supervoxels of a real CT.

A supervoxel (scikit-image SLIC on the abdomen-windowed volume, in millimetres) is a compact
3D region of similar intensity, so its cross-sections move and change shape with the real
anatomy from slice to slice. Written as a label volume whose ids 1..N are the supervoxels
(``--schema objects``), it gives the STCN object tracks from unlabeled scans.

Axis order is the canonical ``(D, H, W)`` of ``slicevos.io.volume``; ``spacing`` is
``(dz, dy, dx)`` in mm. SLIC runs on a grid downsampled in-plane to about ``working_mm`` (it
is the slow part); the labels are brought back to the full grid by nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

from slicevos.errors import InputError

MAX_OBJECT_IDS = 255  # the objects schema and the uint8 label cache


@dataclass(frozen=True)
class SupervoxelConfig:
    """``segment_mm``: target supervoxel edge (mm); the count is the body volume over its
    cube, at most ``max_objects``. ``compactness``: SLIC's trade-off between intensity and
    space on the [0, 1] windowed image (lower follows edges more). ``window`` (level, width)
    in HU. Voxels at or below ``body_hu`` outside the largest connected body are never
    objects. Supervoxels under ``min_volume_ml`` are dropped."""

    segment_mm: float = 40.0
    compactness: float = 0.1
    window: tuple[float, float] = (40.0, 400.0)
    body_hu: float = -500.0
    working_mm: float = 1.4
    min_volume_ml: float = 1.0
    max_objects: int = MAX_OBJECT_IDS
    max_iterations: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.max_objects <= MAX_OBJECT_IDS:
            raise InputError("max_objects", f"got {self.max_objects}",
                             f"give 1..{MAX_OBJECT_IDS} (label ids are uint8)")
        if self.segment_mm <= 0 or self.working_mm <= 0 or self.compactness <= 0:
            raise InputError("supervoxels", "segment_mm, working_mm and compactness must be "
                             f"> 0 (got {self.segment_mm}, {self.working_mm}, "
                             f"{self.compactness})", "give positive values")


def body_mask(hu: np.ndarray, body_hu: float) -> np.ndarray:
    """bool (D, H, W): the largest 3D connected region above ``body_hu`` (drops the table,
    air and anything outside the patient)."""
    above = hu > body_hu
    if not above.any():
        return above
    return cc3d.largest_k(above, k=1, connectivity=6) > 0


def _in_plane_step(spacing: tuple[float, float, float], working_mm: float) -> int:
    return max(1, int(round(working_mm / max(min(spacing[1], spacing[2]), 1e-6))))


def supervoxel_objects(hu: np.ndarray, spacing: tuple[float, float, float],
                       config: SupervoxelConfig = SupervoxelConfig()) -> np.ndarray:
    """uint8 (D, H, W) supervoxel ids 1..N (N <= ``config.max_objects``), 0 outside the body.

    Ids are ordered by first appearance along the volume, each a 3D connected region.
    Deterministic for a given input and config.
    """
    from skimage.segmentation import slic  # the tracks extra: heavy, only needed here

    if hu.ndim != 3:
        raise InputError("volume", f"expected a (D, H, W) volume, got shape {hu.shape}",
                         "pass a 3D CT")
    step = _in_plane_step(spacing, config.working_mm)
    small_hu = hu[:, ::step, ::step]
    small_spacing = (spacing[0], spacing[1] * step, spacing[2] * step)
    body = body_mask(small_hu, config.body_hu)
    voxel_ml = float(np.prod(small_spacing)) / 1000.0
    if body.sum() * voxel_ml < config.min_volume_ml:
        raise InputError("volume", f"only {body.sum() * voxel_ml:.2f} ml above "
                         f"{config.body_hu:g} HU", "is this a CT in Hounsfield units?")
    level, width = config.window
    image = np.clip((small_hu - (level - width / 2)) / width, 0, 1).astype(np.float32)
    count = int(body.sum() * voxel_ml * 1000.0 / config.segment_mm ** 3)
    count = int(np.clip(count, 1, config.max_objects))
    labels = slic(image, n_segments=count, compactness=config.compactness,
                  spacing=np.asarray(small_spacing), mask=body, channel_axis=None,
                  start_label=1, max_num_iter=config.max_iterations)
    labels = _keep_objects(labels, voxel_ml, config)
    if step > 1:
        labels = np.repeat(np.repeat(labels, step, axis=1), step, axis=2)
        labels = labels[:, :hu.shape[1], :hu.shape[2]]
        pad = ((0, 0), (0, hu.shape[1] - labels.shape[1]), (0, hu.shape[2] - labels.shape[2]))
        labels = np.pad(labels, pad, mode="edge")
    return np.ascontiguousarray(labels, dtype=np.uint8)


def _keep_objects(labels: np.ndarray, voxel_ml: float, config: SupervoxelConfig) -> np.ndarray:
    """Split every supervoxel into its 3D connected pieces, drop pieces under
    ``min_volume_ml``, keep the ``max_objects`` largest, renumber 1..N in scan order."""
    pieces = cc3d.connected_components(labels.astype(np.uint32), connectivity=26)
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    large = np.flatnonzero(sizes * voxel_ml >= config.min_volume_ml)
    kept = large[np.argsort(-sizes[large], kind="stable")][:config.max_objects]
    keep = np.zeros(sizes.size, dtype=bool)
    keep[kept] = True
    pieces = np.where(keep[pieces], pieces, 0)
    ids, first = np.unique(pieces, return_index=True)
    order = ids[1:][np.argsort(first[1:], kind="stable")] if ids[0] == 0 else ids
    lookup = np.zeros(sizes.size, dtype=np.uint8)
    lookup[order] = np.arange(1, order.size + 1, dtype=np.uint8)
    return lookup[pieces]
