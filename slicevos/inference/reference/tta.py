"""Flip test-time augmentation for the reference stage.

``FlipTTASegmenter`` averages a ``ReferenceSegmenter``'s class probabilities over the plain
slices and their flips (each flipped back before averaging). A left-right flip mirrors the
patient, so after flipping back the paired right/left classes (``right_kidney`` <->
``left_kidney``, ``right_adrenal_gland`` <-> ``left_adrenal_gland``: names ``right_*`` /
``left_*`` in the schema) swap channels: the network called the mirrored right kidney a left
kidney. Flips only help networks trained with mirroring augmentation; the project's default
augmentation has none (``configs/augment/default.yaml`` says why), so TTA is off by default.
"""

from __future__ import annotations

import numpy as np
import torch

from slicevos.inference.reference.segmenter import (
    ReferenceSegmenter,
    SlicePrediction,
    class_argmax,
)
from slicevos.io.labels import LabelSchema

FLIP_AXES: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "flip_lr": ((), (-1,)),
    "flip_lr_ud": ((), (-1,), (-2,)),
}


def mirrored_class_order(schema: LabelSchema, num_classes: int) -> np.ndarray:
    """Channel permutation (num_classes,) that swaps every ``right_X`` class with ``left_X``."""
    order = np.arange(num_classes)
    names = {c.name: c.id for c in schema.classes if c.id < num_classes}
    for name, class_id in names.items():
        if name.startswith("right_") and "left_" + name[len("right_"):] in names:
            other = names["left_" + name[len("right_"):]]
            order[class_id], order[other] = other, class_id
    return order


class FlipTTASegmenter:
    """``predict`` / ``segment`` of ``segmenter`` averaged over the flips of ``mode``
    (:data:`FLIP_AXES`). ``last`` holds the last :class:`SlicePrediction` (labels and the CPS
    disagreement averaged over the flips), so callers of :meth:`segment` can read it."""

    def __init__(self, segmenter: ReferenceSegmenter, schema: LabelSchema, mode: str = "none",
                 num_classes: int | None = None) -> None:
        if mode not in FLIP_AXES:
            raise ValueError(f"unknown TTA mode {mode!r}; known: {sorted(FLIP_AXES)}")
        self.segmenter, self.mode = segmenter, mode
        self.mirror = mirrored_class_order(schema, num_classes or schema.num_classes)
        self.last: SlicePrediction | None = None

    def predict(self, images: np.ndarray, positions: np.ndarray) -> SlicePrediction:
        """uint8 (N, C, H, W) slices + positions (N,) -> labels (N, H, W) uint8 and the
        per-slice CPS disagreement, batch by batch (probabilities are not kept)."""
        flips = FLIP_AXES[self.mode]
        if len(flips) == 1:
            self.last = self.segmenter.predict(images, positions)
            return self.last
        labels, disagreement = [], []
        step = self.segmenter.batch_size
        for start in range(0, len(images), step):
            chunk, pos = images[start:start + step], positions[start:start + step]
            total, disagree = None, np.zeros(len(chunk), np.float32)
            for axes in flips:
                view = np.flip(chunk, axes) if axes else chunk
                out = self.segmenter.predict(np.ascontiguousarray(view), pos,
                                             keep_probabilities=True)
                probs = np.flip(out.probabilities, axes) if axes else out.probabilities
                if -1 in axes:
                    probs = probs[:, self.mirror]
                total = probs if total is None else total + probs
                disagree += out.disagreement
            labels.append(class_argmax(torch.from_numpy(total)).numpy().astype(np.uint8))
            disagreement.append(disagree / len(flips))
        self.last = SlicePrediction(np.concatenate(labels), None,
                                    np.concatenate(disagreement).astype(np.float32))
        return self.last

    def segment(self, images: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.predict(images, positions).labels
