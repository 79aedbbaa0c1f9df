"""What inference needs from a training checkpoint besides the weights."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any, TypeVar

from torch import nn

from slicevos.errors import InputError
from slicevos.io.checkpoint import load_checkpoint
from slicevos.preprocessing.windowing import Window

ModuleT = TypeVar("ModuleT", bound=nn.Module)


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


def build_and_load(path: str | PathLike, build: Callable[[], ModuleT],
                   state: dict[str, Any], tool: str) -> ModuleT:
    """Build a network from a checkpoint's stored config and load its weights; a config this
    slicevos cannot build or weights that do not fit it raise ``InputError`` naming the file."""
    try:
        module = build()
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"the weights do not fit the network its config describes "
                         f"({first[:160]})", f"use the checkpoint as {tool} wrote it, with the "
                         "slicevos version that wrote it") from None
    return module
