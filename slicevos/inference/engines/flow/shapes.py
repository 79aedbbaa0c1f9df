"""What the flow engine keeps of a key slice: each object's clipped signed distance (the
shape it warps) and an intensity model of each object (to end organs the flow cannot end).

Signed distance ``s`` (pixels): positive inside the object, negative outside, the boundary at
0, clipped to ``[floor, clip]``; stored as a crop around the object (its box grown by
``clip``: outside the crop ``s = floor``). ``floor`` is ``-clip``, or with ``outside_depth``
``-min(clip, outside_depth * r)`` with ``r`` the radius of the object's largest part: far
outside an object counts no more than the object being absent, so a part on one key that
lies far from every part on the other key (one of several lesions) fades the way an object
on one key only does, instead of vanishing next to its key. A weighted mean of two such maps
interpolates the shape between two keys (an organ on one key only shrinks and vanishes on
the way).

Intensity model: for each object, the histogram of its pixels on the key slices against the
histogram of a ring around it (``ring`` pixels wide), smoothed; ``llr[v] = log p(v | object)
- log p(v | ring)`` per uint8 grey value of the abdomen window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from scipy import ndimage

from slicevos.data.optical_flow import signed_distance


@dataclass
class ObjectShape:
    """One object on one key: ``distance`` crop (h, w) float32 at rows ``top`` and columns
    ``left`` of the slice; ``radius``: sqrt(area / pi) in pixels; ``floor`` (< 0) its value
    outside the crop (module doc); ``holds``: the objects in its holes there, which count as
    inside it in ``distance``."""

    distance: np.ndarray
    top: int
    left: int
    radius: float
    floor: float
    holds: frozenset[int] = frozenset()

    @cached_property
    def parts(self) -> Parts:
        """The object's connected parts on this key (8-connected; see :class:`Parts`)."""
        inside = self.distance > 0
        labels, count = ndimage.label(inside, np.ones((3, 3), bool))
        if count <= 1:
            ys, xs = np.nonzero(inside) if count else (np.zeros(1), np.zeros(1))
            return Parts(labels, np.zeros(inside.shape, np.int32),
                         np.array([[xs.mean(), ys.mean()]], np.float32),
                         np.array([np.sqrt(len(xs) / np.pi)], np.float32))
        index = np.arange(1, count + 1)
        ys, xs = (np.asarray(ndimage.mean(grid, labels, index), np.float32)
                  for grid in np.indices(inside.shape))
        areas = np.asarray(ndimage.sum(inside, labels, index), np.float32)
        nearest = ndimage.distance_transform_edt(~inside, return_distances=False,
                                                 return_indices=True)
        owner = (labels[nearest[0], nearest[1]] - 1).astype(np.int32)
        return Parts(labels, owner, np.stack([xs, ys], axis=1), np.sqrt(areas / np.pi))


@dataclass
class Parts:
    """An object's parts on one key, in its crop: ``labels`` (h, w) 0 outside, 1..n; ``owner``
    (h, w) int32 index of each pixel's nearest part; ``centres`` (n, 2) float32 (x, y);
    ``radii`` (n,) float32 area-equivalent radii in pixels."""

    labels: np.ndarray
    owner: np.ndarray
    centres: np.ndarray
    radii: np.ndarray

    def __len__(self) -> int:
        return len(self.radii)

    def reach(self, i: int) -> int:
        """How far (pixels) part ``i`` may lie from its counterpart on another key: its
        radius, at least 2."""
        return int(np.ceil(max(2.0, float(self.radii[i]))))

    def zones(self, which: np.ndarray, top: int, left: int) -> list[tuple[slice, slice]]:
        """Boxes (slice coordinates; the crop at ``top``, ``left``) around the parts where
        ``which`` (n,) is True, each grown by its :meth:`reach`."""
        boxes = []
        for i, box in enumerate(ndimage.find_objects(self.labels)):
            if box is not None and which[i]:
                reach = self.reach(i)
                boxes.append((slice(max(0, top + box[0].start - reach), top + box[0].stop + reach),
                              slice(max(0, left + box[1].start - reach),
                                    left + box[1].stop + reach)))
        return boxes


def scaled_lookup(shape: ObjectShape, local: np.ndarray, part_scales: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The object with each part shrunk about its centroid: ``local`` (h', w', 2) crop
    coordinates (x, y) of the target pixels and ``part_scales`` (n,) in [0, 1] -> where to read
    ``shape.distance``, and (h', w') the scale to multiply what is read by (0: that part has
    ended); each pixel follows its nearest part on the key."""
    parts = shape.parts
    if len(parts) == 1:
        owner = np.zeros(local.shape[:2], np.int64)
    else:
        owner = cv2.remap(parts.owner.astype(np.float32), local, None, cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REPLICATE).astype(np.int64)
    scale = part_scales.astype(np.float32)[owner]
    centres = parts.centres[owner]
    lookup = centres + (local - centres) / np.maximum(scale, 1e-3)[..., None]
    return np.ascontiguousarray(lookup, dtype=np.float32), scale


def unmatched_parts(shape: ObjectShape, other: np.ndarray | None) -> np.ndarray:
    """(n,) bool: the parts of ``shape`` with no counterpart in ``other`` (H, W) bool, the same
    object's mask on the segment's other key (None: absent there): no pixel of it within
    the part's radius (at least 2 px) of the part."""
    parts = shape.parts
    if other is None:
        return np.ones(len(parts), bool)
    unmatched = np.zeros(len(parts), bool)
    for i, box in enumerate(ndimage.find_objects(parts.labels)):
        if box is None:
            unmatched[i] = True
            continue
        reach = parts.reach(i)
        rows = slice(max(0, box[0].start - reach), box[0].stop + reach)
        cols = slice(max(0, box[1].start - reach), box[1].stop + reach)
        part = (parts.labels[rows, cols] == i + 1).astype(np.uint8)
        there = other[shape.top + rows.start:shape.top + rows.start + part.shape[0],
                      shape.left + cols.start:shape.left + cols.start + part.shape[1]]
        part = part[:there.shape[0], :there.shape[1]]
        if (part.view(bool) & there).any():
            continue  # they overlap: matched without the (large) dilation
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
        unmatched[i] = not (cv2.dilate(part, kernel).view(bool) & there).any()
    return unmatched


def label_values(labels: np.ndarray) -> list[int]:
    """The nonzero values of a uint8 label map, sorted (a histogram: ~10x ``np.unique``)."""
    return (np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[1:]) + 1).tolist()


def key_shapes(labels: np.ndarray, clip: float,
               outside_depth: float | None = None) -> dict[int, ObjectShape]:
    """Object id -> :class:`ObjectShape` for every object on the key ``labels`` (H, W);
    ``outside_depth`` sets the floor of the signed distances (module doc; None: ``-clip``)."""
    height, width = labels.shape
    margin = int(np.ceil(clip)) + 1
    shapes: dict[int, ObjectShape] = {}
    for object_id in label_values(labels):
        mask = labels == object_id
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        top, bottom = max(0, rows[0] - margin), min(height, rows[-1] + margin + 1)
        left, right = max(0, cols[0] - margin), min(width, cols[-1] + margin + 1)
        crop = mask[top:bottom, left:right]
        # other objects in the object's holes (a lesion in its organ) are inside it here,
        # so its shape closes over them as they end; they win where they are (``holds``)
        others = labels[top:bottom, left:right]
        enclosed = ndimage.binary_fill_holes(crop) & ~crop & (others != 0)
        holds = frozenset(int(o) for o in np.unique(others[enclosed]))
        crop = crop | enclosed
        floor = -clip
        if outside_depth is not None:
            _, _, stats, _ = cv2.connectedComponentsWithStats(crop.astype(np.uint8),
                                                              connectivity=8)
            largest = float(stats[1:, cv2.CC_STAT_AREA].max())
            floor = -min(clip, outside_depth * float(np.sqrt(largest / np.pi)))
        distance = np.clip(signed_distance(crop), floor, clip)
        # the crop border is not the object's border: pixels there are outside by >= margin
        shapes[int(object_id)] = ObjectShape(np.ascontiguousarray(distance), int(top),
                                             int(left), float(np.sqrt(mask.sum() / np.pi)),
                                             floor, holds)
    return shapes


def intensity_models(keys: Iterable[tuple[np.ndarray, np.ndarray]], ring: int = 7,
                     smooth: float = 4.0, floor: float = 1e-3, context: bool = True,
                     objects: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Object id -> llr (256,) float32 from ``(grey (H, W) uint8, labels (H, W))`` key pairs:
    the object's grey values against those around it, a ``ring`` px band. With
    ``context``, a grey value the object never shows on its keys also counts against it as
    often as the rest of its key slices show it (what the flow may carry it into beyond
    its neighbours: bone, contrast-filled vessels); without, a value seen neither in the
    object nor in its ring scores 0, no evidence either way. ``objects``: only these (None:
    every object on the keys)."""
    inside: dict[int, np.ndarray] = {}
    around: dict[int, np.ndarray] = {}
    rest: dict[int, np.ndarray] = {}
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))
    wanted = None if objects is None else set(objects)
    for grey, labels in keys:
        every = np.bincount(grey.ravel(), minlength=256)
        for object_id in label_values(labels):
            if wanted is not None and object_id not in wanted:
                continue
            mask = (labels == object_id).astype(np.uint8)
            band = cv2.dilate(mask, kernel).astype(bool) & ~mask.astype(bool)
            own = np.bincount(grey[mask.astype(bool)], minlength=256)
            inside.setdefault(int(object_id), np.zeros(256)).__iadd__(own)
            around.setdefault(int(object_id), np.zeros(256)).__iadd__(
                np.bincount(grey[band], minlength=256))
            rest.setdefault(int(object_id), np.zeros(256)).__iadd__(every - own)
    return {o: _log_ratio(inside[o], around[o], smooth, floor, rest[o], context)
            for o in inside}


def end_models(keys: Sequence[tuple[np.ndarray, np.ndarray]], min_pixels: int,
               context: bool = True, far: int = 0) -> dict[int, np.ndarray]:
    """:func:`intensity_models` of the end rule, from ``(grey, labels)`` key pairs ordered from
    an end of the volume inward: each object's from the first keys that hold at least
    ``min_pixels`` (at least 1) of its pixels (all of them if they never do; the last
    ``far`` keys lie in the organ's other half: :func:`model_depths`). A large organ's
    model is its grey values at that end, where the rule acts; a small one pools enough
    pixels for a histogram of 256 grey values."""
    by_depth: dict[int, list[int]] = {}
    for object_id, depth in model_depths([labels for _, labels in keys], min_pixels,
                                         far).items():
        by_depth.setdefault(depth, []).append(object_id)
    models: dict[int, np.ndarray] = {}
    for depth, group in by_depth.items():
        models.update(intensity_models(keys[:depth], context=context, objects=group))
    return models


OTHER_END_BELOW = 0.5  # model_depths: the share of min_pixels below which the far keys lend


def model_depths(labels: Sequence[np.ndarray], min_pixels: int, far: int = 0
                 ) -> dict[int, int]:
    """Object id -> how many of the key label maps ``labels`` (ordered from an end inward)
    its :func:`end_models` model reads: the first that hold ``min_pixels`` (at least 1) of
    its pixels together, all of them if they never do. The last ``far`` of them lie no
    nearer this end than the other end's outermost key: their grey values are the organ's
    in its other half, not near this end (docs/labeling.md, "Keys that make it worse"). An
    object reads them only where the nearer keys hold fewer than ``OTHER_END_BELOW`` times
    ``min_pixels`` of its pixels, too few for a histogram (an aorta of 30 px a slice on a
    3 mm scan), and then only until it holds that many."""
    if not labels:
        return {}
    cumulative = np.cumsum([np.bincount(plane.ravel(), minlength=256) for plane in labels],
                           axis=0)
    near = len(labels) - far
    least = OTHER_END_BELOW * max(min_pixels, 1)
    depths = {}
    for object_id in (int(o) for o in np.flatnonzero(cumulative[-1]) if o):
        if near > 0 and cumulative[near - 1, object_id] >= least:
            usable, needed = near, max(min_pixels, 1)
        else:  # too few near this end: the far keys lend what a histogram needs at least
            usable, needed = len(labels), least
        enough = np.flatnonzero(cumulative[:usable, object_id] >= needed)
        depths[object_id] = int(enough[0]) + 1 if len(enough) else usable
    return depths


def _log_ratio(inside: np.ndarray, around: np.ndarray, smooth: float, floor: float,
               rest: np.ndarray, context: bool) -> np.ndarray:
    def density(hist: np.ndarray) -> np.ndarray:
        blurred = cv2.GaussianBlur(hist.astype(np.float32)[None], (0, 0), smooth)[0]
        return blurred / max(float(blurred.sum()), 1.0)

    own = density(inside)
    outside = density(around)
    if context:
        # grey values the object never shows on its keys: what else its key slices show there
        outside = outside + np.where(own < floor / 256, density(rest), 0.0)
    return np.log((own + floor / 256) / (outside + floor / 256)).astype(np.float32)
