"""Overlay previews of a segmented volume: axial, coronal and sagittal mosaics in one PNG.

Orientation, from the canonical (D, H, W) = (S, P, L) axes of ``slicevos.io.volume``:

- axial tile ``volume[z]``: anterior at the top, patient right on the image left (radiological
  convention; canonical column 0 is the patient's right, so no flip).
- coronal tile ``volume[::-1, y, :]``: superior at the top, patient right on the image left.
- sagittal tile ``volume[::-1, :, x]``: superior at the top, anterior on the image left.

Each tile is resampled so a pixel has the same physical size along both axes (coronal and
sagittal rows are ``dz`` apart, columns ``dx`` / ``dy``), then scaled to fit ``tile_px``.
Labels are blended in their class colour with a full-colour contour. Only the chosen planes
are copied (never the volume), so 512x512x1000 volumes stay cheap.
"""

from __future__ import annotations

import colorsys
from collections import Counter
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import cv2
import numpy as np

from slicevos.errors import InputError
from slicevos.inference.reporting.legend import LegendEntry, legend_image
from slicevos.inference.reporting.report import check_spacing, slice_class_areas
from slicevos.io.atomic import atomic_write_bytes
from slicevos.io.labels import LabelSchema
from slicevos.preprocessing.windowing import PRESETS, Window, apply_window

VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
_LETTER = {"axial": "z", "coronal": "y", "sagittal": "x"}
_HINT = {"axial": "anterior up, patient right on the left",
         "coronal": "superior up, patient right on the left",
         "sagittal": "superior up, anterior on the left"}
_GAP, _TITLE_H, _NAN_GREY = 2, 18, 60
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def palette_colour(class_id: int) -> tuple[int, int, int]:
    """A deterministic saturated RGB colour for any id (golden-ratio hue steps)."""
    hue = (class_id * 0.6180339887) % 1.0
    sat = (1.0, 0.7, 0.5)[class_id % 3]
    val = (1.0, 0.8)[(class_id // 3) % 2]
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, val))


def organ_colours(schema: LabelSchema) -> dict[int, tuple[int, int, int]]:
    """Class id -> RGB: the schema's own colour (fixed FLARE organ colours) where no other
    class shares it, else :func:`palette_colour` (e.g. the class-agnostic objects 1..255)."""
    counts = Counter(c.color for c in schema.classes)
    return {c.id: tuple(c.color) if counts[c.color] == 1 else palette_colour(c.id)
            for c in schema.classes}


def _colour_lut(schema: LabelSchema) -> np.ndarray:
    """uint8 (256, 3): RGB per id; ids outside the schema get :func:`palette_colour`."""
    colours = organ_colours(schema)
    return np.array([colours.get(i) or palette_colour(i) for i in range(256)], np.uint8)


def legend_entries(present_ids: Sequence[int], schema: LabelSchema) -> list[LegendEntry]:
    """One entry per present foreground id (sorted), named by the schema (``class_<id>``
    for ids it does not define)."""
    names = dict(zip(schema.ids, schema.names, strict=True))
    lut = _colour_lut(schema)
    return [LegendEntry(i, names.get(i, f"class_{i}"), tuple(int(v) for v in lut[i]))
            for i in sorted(int(i) for i in present_ids) if i > 0]


def _axis_extent(labels: np.ndarray, axis: int, z_areas: np.ndarray) -> tuple[int, int]:
    """First and last index along ``axis`` holding foreground (the whole axis if none)."""
    if axis == 0:
        hits = np.flatnonzero(z_areas[:, 1:].any(axis=1))
    else:
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(labels.max(axis=other))
    return (int(hits[0]), int(hits[-1])) if hits.size else (0, labels.shape[axis] - 1)


def preview_indices(first: int, last: int, count: int) -> np.ndarray:
    """``count`` evenly spaced indices strictly inside [first, last] (unique; fewer when the
    range is short): the planes shown for one view."""
    points = np.linspace(first, last, count + 2)[1:-1] if last > first else np.array([first])
    return np.unique(np.rint(points).astype(np.int64))


def _tile_shape(view: str, shape: Sequence[int], spacing: Sequence[float],
                tile_px: int | None) -> tuple[int, int]:
    """(height, width) of one tile: square physical pixels of the column spacing, scaled so
    the longer side is ``tile_px`` (native column count when None)."""
    (d, h, w), (dz, dy, dx) = shape, spacing
    rows_mm, cols, col_mm = {"axial": (h * dy, w, dx), "coronal": (d * dz, w, dx),
                             "sagittal": (d * dz, h, dy)}[view]
    height, width = rows_mm / col_mm, float(cols)
    if tile_px is not None:
        scale = tile_px / max(height, width)
        height, width = height * scale, width * scale
    return max(1, round(height)), max(1, round(width))


def _plane(array: np.ndarray, view: str, index: int) -> np.ndarray:
    """Display plane (rows, cols) of a (D, H, W) array, oriented as the module docstring says."""
    if view == "axial":
        plane = array[index]
    elif view == "coronal":
        plane = array[::-1, index, :]
    else:
        plane = array[::-1, :, index]
    return np.ascontiguousarray(plane)


def _resize(plane: np.ndarray, size_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    height, width = size_hw
    if plane.shape == (height, width):
        return plane
    shrink = height * width < plane.shape[0] * plane.shape[1]
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.resize(plane, (width, height), interpolation=interp)  # cv2 sizes are (w, h)


def _overlay(grey: np.ndarray, lab: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 (h, w) grey + labels -> RGB: classes blended with ``alpha``, contours opaque."""
    rgb = np.repeat(grey[..., None], 3, axis=2)
    fg = lab > 0
    colour = lut[lab]
    rgb[fg] = np.rint(rgb[fg] * (1.0 - alpha) + colour[fg] * alpha).astype(np.uint8)
    edge = np.zeros(lab.shape, bool)
    edge[1:] |= lab[1:] != lab[:-1]
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge &= fg
    rgb[edge] = colour[edge]
    return rgb


def _uncertainty_strip(values: np.ndarray, height: int) -> np.ndarray:
    """(D,) per-slice uncertainty -> RGB (height, w) strip, superior at the top (inferno
    colour map scaled to the largest finite value; NaN = dark grey)."""
    values = values[::-1].astype(np.float64)
    finite = np.isfinite(values)
    top = values[finite].max() if finite.any() else 0.0
    scaled = np.where(finite, values / top if top > 0 else 0.0, 0.0)
    codes = np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
    rgb = cv2.applyColorMap(codes[:, None], cv2.COLORMAP_INFERNO)[:, 0, ::-1].copy()
    rgb[~finite] = _NAN_GREY
    column = _resize(rgb[:, None, :], (height, 1), nearest=True).reshape(height, 1, 3)
    strip = np.repeat(column, max(4, height // 40), axis=1)
    return np.concatenate([np.zeros((height, 1, 3), np.uint8), strip], axis=1)


def _text(image: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.35) -> None:
    cv2.putText(image, text, org, _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _mosaic(tiles: list[np.ndarray], columns: int, title: str) -> np.ndarray:
    """Equal-size RGB tiles -> grid with ``_GAP`` px black gaps under a title bar."""
    h, w = tiles[0].shape[:2]
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    out = np.zeros((_TITLE_H + rows * (h + _GAP), columns * (w + _GAP) - _GAP, 3), np.uint8)
    for i, tile in enumerate(tiles):
        top, left = _TITLE_H + (i // columns) * (h + _GAP), (i % columns) * (w + _GAP)
        out[top:top + h, left:left + w] = tile
    _text(out, title, (3, _TITLE_H - 5), 0.4)
    return out[:-_GAP]


def render_preview_panels(
    volume: np.ndarray, labels: np.ndarray, spacing_mm: Sequence[float], schema: LabelSchema,
    views: Sequence[str] = VIEWS, tiles: tuple[int, int] = (2, 4), tile_px: int | None = 256,
    uncertainty: np.ndarray | None = None, window: Window | str = "abdomen", alpha: float = 0.4,
) -> dict[str, np.ndarray]:
    """RGB uint8 mosaics: ``{view: (h, w, 3)}`` for each view shown, plus ``"legend"``.

    ``volume``: canonical (D, H, W) HU (shown in ``window``), or uint8 already windowed
    ((D, H, W), or (D, C, H, W) using channel 0). ``labels``: uint8 (D, H, W). ``tiles``:
    (rows, columns) of planes per view, evenly spaced over the labelled extent along that
    view's axis. Coronal and sagittal are skipped for a 1-slice volume. ``uncertainty``: (D,)
    per-slice values (NaN = not processed) drawn as a strip right of each coronal tile.
    """
    grey_src = volume[:, 0] if volume.ndim == 4 and volume.dtype == np.uint8 else volume
    if grey_src.ndim != 3 or labels.shape != grey_src.shape or labels.dtype != np.uint8:
        raise ValueError(f"expected volume (D, H, W) or uint8 (D, C, H, W) and uint8 labels of "
                         f"the same (D, H, W), got {volume.shape} and {labels.dtype} {labels.shape}")
    unknown = sorted(set(views) - set(VIEWS))
    if unknown or not views:
        raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {tuple(views)}")
    if uncertainty is not None and np.shape(uncertainty) != (labels.shape[0],):
        raise ValueError(f"uncertainty must have shape ({labels.shape[0]},), got {np.shape(uncertainty)}")
    spacing = check_spacing(spacing_mm)
    win = PRESETS[window] if isinstance(window, str) else window
    lut = _colour_lut(schema)
    z_areas = slice_class_areas(labels)
    panels: dict[str, np.ndarray] = {}
    for view in views:
        if view != "axial" and labels.shape[0] == 1:
            continue
        size = _tile_shape(view, labels.shape, spacing, tile_px)
        tiles_rgb = []
        first, last = _axis_extent(labels, _AXIS[view], z_areas)
        for index in preview_indices(first, last, tiles[0] * tiles[1]).tolist():
            plane = _plane(grey_src, view, index)
            grey = plane if plane.dtype == np.uint8 else apply_window(plane, win)
            tile = _overlay(_resize(grey, size, False),
                            _resize(_plane(labels, view, index), size, True), lut, alpha)
            if size[0] >= 24:
                _text(tile, f"{_LETTER[view]}={index}", (2, 11))
            if uncertainty is not None and view == "coronal":
                tile = np.concatenate([tile, _uncertainty_strip(np.asarray(uncertainty), size[0])],
                                      axis=1)
            tiles_rgb.append(tile)
        panels[view] = _mosaic(tiles_rgb, tiles[1], f"{view} ({_HINT[view]})")
    width = max(p.shape[1] for p in panels.values())
    present = np.flatnonzero(z_areas.sum(axis=0))
    panels["legend"] = legend_image(legend_entries(present, schema), width)
    return panels


def render_preview(
    volume: np.ndarray, labels: np.ndarray, spacing_mm: Sequence[float], schema: LabelSchema,
    out_path: str | PathLike, views: Sequence[str] = VIEWS, tiles: tuple[int, int] = (2, 4),
    tile_px: int | None = 256, uncertainty: np.ndarray | None = None,
) -> Path:
    """Write the :func:`render_preview_panels` mosaics stacked (views, then legend) as one
    PNG at ``out_path`` (atomic). Returns the path."""
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise InputError(out_path, "preview name must end in .png", "rename the preview output")
    panels = render_preview_panels(volume, labels, spacing_mm, schema, views, tiles, tile_px,
                                   uncertainty)
    width = max(p.shape[1] for p in panels.values())
    rows = []
    for panel in panels.values():
        padded = np.zeros((panel.shape[0] + 2 * _GAP, width, 3), np.uint8)
        padded[_GAP:_GAP + panel.shape[0], :panel.shape[1]] = panel
        rows.append(padded)
    ok, png = cv2.imencode(".png", np.concatenate(rows)[..., ::-1])  # cv2 expects BGR
    if not ok:
        raise RuntimeError(f"PNG encoding of the preview {out_path} failed")
    atomic_write_bytes(out_path, png.tobytes())
    return out_path
