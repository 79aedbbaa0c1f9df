"""What inference needs from a training checkpoint besides the weights."""

from __future__ import annotations

from os import PathLike
from typing import Any

from slicevos.errors import InputError
from slicevos.io.checkpoint import load_checkpoint
from slicevos.preprocessing.windowing import Window


def load_with_windows(path: str | PathLike, kind: str, tool: str
                      ) -> tuple[dict[str, Any], tuple[Window, ...]]:
    """Load a ``kind`` checkpoint and the CT windows its network was trained on (stored by the
    trainer in ``extra["windows"]``); ``tool`` names the trainer in the error message."""
    payload = load_checkpoint(path, map_location="cpu", kind=kind)
    extra = payload.get("extra") or {}
    if "windows" not in extra:
        raise InputError(path, "checkpoint lacks the CT windows it was trained with",
                         f"use a checkpoint written by {tool}")
    return payload, tuple(Window(w["level"], w["width"]) for w in extra["windows"])
