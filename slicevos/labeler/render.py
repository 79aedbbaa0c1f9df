"""Slices of the three views, encoded for the page.

Views, from the canonical (D, H, W) = (S, P, L) axes (as ``slicevos.inference.reporting.preview``):
``axial`` ``volume[z]`` (H x W, anterior up, patient right on the left), ``coronal``
``volume[::-1, y, :]`` (D x W, superior up) and ``sagittal`` ``volume[::-1, :, x]`` (D x H,
superior up, anterior on the left). Only the requested plane is copied.

Grey images are PNG of the HU plane through one window preset; labels are PNG whose grey
value is the label id (lossless, a few kB per slice), which the page colours itself.
"""

from __future__ import annotations

import cv2
import numpy as np

from slicevos.errors import InputError
from slicevos.preprocessing.windowing import PRESETS, apply_window

VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
# the page's window switch: name -> preset of slicevos.preprocessing.windowing
DISPLAY_WINDOWS: dict[str, str] = {"abdomen": "abdomen", "chest": "chest", "bone": "spine"}
_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


def view_extent(view: str, shape: tuple[int, int, int]) -> int:
    """Number of planes of ``view`` in a canonical volume of ``shape``."""
    return shape[_AXIS[check_view(view)]]


def check_view(view: str) -> str:
    if view not in _AXIS:
        raise InputError(None, f"unknown view {view!r}", f"use one of {', '.join(VIEWS)}")
    return view


def plane(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """The 2D plane ``index`` of ``view`` (module doc) of a canonical (D, H, W) array."""
    extent = view_extent(view, volume.shape)
    if not 0 <= index < extent:
        raise InputError(None, f"{view} slice {index} is outside the volume (0..{extent - 1})",
                         f"ask for a {view} slice index in 0..{extent - 1}")
    if view == "axial":
        return volume[index]
    if view == "coronal":
        return volume[::-1, index, :]
    return volume[::-1, :, index]


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 (h, w) image (fast compression)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_label_png(data: bytes, shape: tuple[int, int]) -> np.ndarray | None:
    """uint8 (h, w) from :func:`encode_png` bytes; None if unreadable or of another shape."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8 or image.shape != shape:
        return None
    return image


def grey_png(hu: np.ndarray, view: str, index: int, window: str) -> bytes:
    """PNG of plane ``index`` of ``view`` of the HU volume through display ``window``."""
    if window not in DISPLAY_WINDOWS:
        raise InputError(None, f"unknown window {window!r}",
                         f"use one of {', '.join(DISPLAY_WINDOWS)}")
    return encode_png(apply_window(plane(hu, view, index), PRESETS[DISPLAY_WINDOWS[window]]))


def label_png(labels: np.ndarray, view: str, index: int) -> bytes:
    """PNG of plane ``index`` of ``view`` of the label volume (grey value = label id)."""
    return encode_png(plane(labels, view, index))
