"""Volume-level validation of a slice segmenter on cached cases: 3D DSC per organ over all
slices (only the classes each case's annotator drew)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from slicevos.data.cache import SliceCache
from slicevos.inference.reference.key_slices import SliceSegmenter
from slicevos.io.labels import LabelSchema
from slicevos.metrics.overlap import dice_per_class
from slicevos.preprocessing.position import relative_position


def segment_cached_volume(segmenter: SliceSegmenter, cache: SliceCache, case_id: str) -> np.ndarray:
    """Segment every slice of a cached case: uint8 (D, H, W)."""
    image = np.asarray(cache.image(case_id))
    depth = image.shape[0]
    if hasattr(segmenter, "input_spacing"):  # a ReferenceSegmenter resamples to its spacing
        segmenter.input_spacing = tuple(cache.meta(case_id)["spacing"][1:])
    return segmenter.segment(image, relative_position(np.arange(depth), depth))


def volume_dice(segmenter: SliceSegmenter, cache: SliceCache, case_ids: Sequence[str],
                schema: LabelSchema) -> dict[str, float]:
    """Mean over cases of the per-organ 3D DSC (FLARE empty rules: both empty = 1).

    Returns ``{"dice_mean": mean over organs, "dice/<organ>": ...}``; an organ no case
    annotated is left out.
    """
    scores: dict[int, list[float]] = {c.id: [] for c in schema.classes}
    for case_id in case_ids:
        labels = cache.labels(case_id)
        if labels is None:
            raise ValueError(f"validation case {case_id} has no labels")
        annotated = [c for c in cache.meta(case_id)["annotated_class_ids"] if c in scores]
        pred = segment_cached_volume(segmenter, cache, case_id)
        for class_id, value in dice_per_class(np.asarray(labels), pred, annotated).items():
            scores[class_id].append(value)
    out = {f"dice/{schema.by_id(cid).name}": float(np.mean(v)) for cid, v in scores.items() if v}
    out["dice_mean"] = float(np.mean(list(out.values()))) if out else 0.0
    return out
