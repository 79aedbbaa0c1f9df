"""Windowing settings as a typed config (``configs/windowing/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slicevos.preprocessing.windowing import DEFAULT_WINDOWS, Window, resolve_windows


@dataclass(frozen=True)
class WindowingConfig:
    """``windows``: preset names or ``{level, width}`` mappings, one output channel each."""

    windows: tuple[Any, ...] = DEFAULT_WINDOWS

    def resolved(self) -> tuple[Window, ...]:
        return resolve_windows(self.windows)
