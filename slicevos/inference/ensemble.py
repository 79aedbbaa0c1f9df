"""Ensemble members for pseudo-labeling: each predicts a whole volume's labels.

A member is any object with a ``name``, an ``identity()`` (JSON-ready: what makes its output
what it is, checked before a rerun reuses a case) and ``predict(volume) -> uint8 (D, H, W)``
on the canonical grid. ``ReferenceMember`` runs a reference checkpoint (CPS pair) over every
slice, optionally on flipped slices (TTA). The propagation pipeline can become a member type
later without touching generation.

TTA flips act on the windowed slices (D, C, H, W): ``flip_lr`` mirrors columns (patient right
<-> left), ``flip_ud`` rows (anterior <-> posterior). The prediction is flipped back. A
left-right mirror turns the patient's right kidney into a left kidney, so after ``flip_lr`` the
paired classes ``right_X`` / ``left_X`` of the schema swap ids back.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any, Protocol

import numpy as np
import torch

from slicevos.data.dataset_folder import source_fingerprint
from slicevos.errors import InputError
from slicevos.inference.segmenter import ReferenceSegmenter
from slicevos.inference.tta import mirrored_class_order
from slicevos.io.volume import Volume
from slicevos.preprocessing.position import relative_position
from slicevos.preprocessing.windowing import window_volume

FLIP_AXES = {"flip_lr": -1, "flip_ud": -2}  # axis of (..., H, W)


class Member(Protocol):
    name: str

    def identity(self) -> dict[str, Any]:
        """JSON-ready description, ``{"name": ..., ...}``; equal identities give equal labels."""

    def predict(self, volume: Volume) -> np.ndarray:
        """Canonical volume -> uint8 (D, H, W) labels."""


class ReferenceMember:
    """A reference checkpoint (CPS pair, mean of both softmaxes) as an ensemble member."""

    def __init__(self, segmenter: ReferenceSegmenter, name: str, flip: str | None = None) -> None:
        if segmenter.info is None:
            raise ValueError("segmenter must come from ReferenceSegmenter.from_checkpoint")
        if flip is not None and flip not in FLIP_AXES:
            raise InputError(None, f"unknown TTA flip {flip!r}", f"use one of {sorted(FLIP_AXES)}")
        self.segmenter, self.name, self.flip = segmenter, name, flip
        self._lut = (mirrored_class_order(segmenter.info.schema, 256).astype(np.uint8)
                     if flip == "flip_lr" else None)  # label id -> id with right/left swapped

    def identity(self) -> dict[str, Any]:
        path = self.segmenter.info.path
        return {"name": self.name, "type": "reference", "flip": self.flip,
                "checkpoint": str(path.absolute()), "fingerprint": source_fingerprint(path)}

    def predict(self, volume: Volume) -> np.ndarray:
        images = window_volume(volume.hu, self.segmenter.info.windows)  # (D, C, H, W)
        if self.flip is not None:
            images = np.ascontiguousarray(np.flip(images, FLIP_AXES[self.flip]))
        depth = volume.num_slices
        labels = self.segmenter.segment(images, relative_position(np.arange(depth), depth))
        if self.flip is not None:
            labels = np.ascontiguousarray(np.flip(labels, FLIP_AXES[self.flip]))
        return labels if self._lut is None else self._lut[labels]


def reference_members(checkpoints: Sequence[str | PathLike], tta: Sequence[str] = (),
                      device: str | torch.device = "cpu", batch_size: int = 8,
                      amp_dtype: torch.dtype | None = None) -> list[ReferenceMember]:
    """Members ``ckpt<i>`` and ``ckpt<i>+<flip>`` for each checkpoint (one model in memory per
    checkpoint). All checkpoints must share one label schema."""
    members: list[ReferenceMember] = []
    schema = None
    for i, path in enumerate(checkpoints):
        segmenter = ReferenceSegmenter.from_checkpoint(path, device, batch_size, amp_dtype)
        if schema is not None and segmenter.info.schema != schema:
            raise InputError(path, f"schema {segmenter.info.schema.name} differs from the first "
                             f"checkpoint's {schema.name}", "use checkpoints of one label schema")
        schema = segmenter.info.schema
        members.append(ReferenceMember(segmenter, f"ckpt{i}"))
        members += [ReferenceMember(segmenter, f"ckpt{i}+{flip}", flip) for flip in tta]
    return members


def predict_members(volume: Volume, members: Sequence[Member]) -> np.ndarray:
    """Every member's labels of one volume: uint8 (M, D, H, W), in ``members`` order."""
    return np.stack([m.predict(volume) for m in members]).astype(np.uint8, copy=False)
