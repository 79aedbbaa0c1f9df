"""Preprocessing: CT windowing (and, later, padding to a network stride)."""

from slicevos.preprocessing.windowing import (
    DEFAULT_WINDOWS,
    PRESETS,
    Window,
    apply_window,
    resolve_windows,
    window_volume,
)

__all__ = ["DEFAULT_WINDOWS", "PRESETS", "Window", "apply_window", "resolve_windows", "window_volume"]
