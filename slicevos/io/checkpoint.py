"""Checkpoint files: one dict saved with ``torch.save``, written atomically, loaded safely.

Lives in ``io`` so that inference can read checkpoints without importing training.

Payload (``format == "slicevos"``)::

    format, version, kind         what wrote it ("reference_cps", "propagation", ...)
    config                        the resolved experiment config as plain data (rebuilds the model)
    model                         state_dict of the unwrapped module
    step                          the next iteration to run (= iterations completed)
    metrics, best                 latest validation metrics; {"metric", "value", "step"}
    optimizer, scheduler, scaler  training state (``last.pt`` only)
    rng                           {"torch", "cuda", "numpy", "python"} of rank 0 (``last.pt`` only)
    rng_by_rank                   the same for every rank (distributed runs only)
    extra                         whatever the trainer subclass adds

Every value is a tensor, number, string, list, tuple or dict, so
``torch.load(path, weights_only=True)`` reads it without running pickled code.
"""

from __future__ import annotations

import pickle
import zipfile
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from slicevos.errors import InputError
from slicevos.io.atomic import atomic_path

FORMAT = "slicevos"
VERSION = 1


def make_payload(kind: str, config: dict[str, Any], model: dict[str, Any], step: int,
                 **fields: Any) -> dict[str, Any]:
    """The common header plus ``fields`` (optimizer, scheduler, rng, metrics, best, extra...)."""
    return {"format": FORMAT, "version": VERSION, "kind": kind, "config": config,
            "model": model, "step": step, **fields}


def save_checkpoint(path: str | PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file beside it, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | PathLike, map_location: str | torch.device = "cpu",
                    kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; bad files raise ``InputError``.

    ``kind``: when given, the checkpoint must have been written by that kind of trainer.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found",
                         "check the path; training writes last.pt and best.pt into its out_dir")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        text = str(err)
        if "Weights only load failed" in text:
            problem = "it holds objects that a safe weights_only load refuses"
        else:
            problem = text.split(". ")[0].strip().rstrip(".") if text else type(err).__name__
        raise InputError(path, f"cannot read the checkpoint ({problem})",
                         "the file is truncated, corrupt or not a torch checkpoint; "
                         "use an intact checkpoint, or retrain") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(path, f"not a slicevos checkpoint (format {found!r}, expected {FORMAT!r})",
                         "pass a checkpoint written by slicevos training")
    if payload.get("version", 0) > VERSION:
        raise InputError(path, f"checkpoint version {payload['version']} is newer than this "
                         f"slicevos supports ({VERSION})", "upgrade slicevos")
    if kind is not None and payload.get("kind") != kind:
        raise InputError(path, f"checkpoint kind is {payload.get('kind')!r}, expected {kind!r}",
                         f"pass a checkpoint written by the {kind} trainer")
    return payload
