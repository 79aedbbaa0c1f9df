"""Fusing the two directions of a propagation session, and the per-slice output of a pass:
what the session and its tracks (``slicevos.inference.tracks``) share. The fusion rule is
described in ``slicevos.inference.session``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from slicevos.inference.box_scores import Box, BoxScores, box_size, intersection, over, union

Scores = torch.Tensor | BoxScores


def fusion_weight(z: int, z_left: int, z_right: int, conf_fwd: np.ndarray | None = None,
                  conf_bwd: np.ndarray | None = None) -> float | np.ndarray:
    """Weight of the forward pass (from key ``z_left``) on slice ``z_left < z < z_right``:
    ``w_l = (z_right - z) / (z_right - z_left)`` (the nearer key weighs more); with per-pixel
    confidences (H, W) in (0, 1] of both passes, ``w_l c_l / (w_l c_l + w_r c_r)``."""
    if not z_left < z < z_right:
        raise ValueError(f"fuse_directions needs z_left < z < z_right, got {z_left}, {z}, "
                         f"{z_right}")
    weight_left = (z_right - z) / (z_right - z_left)
    if conf_fwd is None or conf_bwd is None:
        return weight_left
    left = weight_left * np.maximum(conf_fwd, 1e-3)
    right = (1.0 - weight_left) * np.maximum(conf_bwd, 1e-3)
    return (left / (left + right)).astype(np.float32)


def fuse_directions(prob_fwd: Scores, prob_bwd: Scores, z: int, z_left: int, z_right: int,
                    conf_fwd: np.ndarray | None = None,
                    conf_bwd: np.ndarray | None = None, box_fwd: Box | None = None,
                    box_bwd: Box | None = None) -> Scores:
    """Weighted mean (:func:`fusion_weight`) of the forward and backward passes' scores
    ((L, H, W) tensors or :class:`BoxScores`) of slice ``z``. Each confidence covers its
    box of the slice (``box_fwd``, ``box_bwd``; None: all of it) and is 1 outside it; for
    BoxScores the weight is computed only where their boxes are."""
    if conf_fwd is None or conf_bwd is None:
        weight = fusion_weight(z, z_left, z_right)
        if isinstance(prob_fwd, BoxScores):
            return prob_fwd.blend(prob_bwd, weight)
        return torch.lerp(prob_bwd, prob_fwd, weight)
    if isinstance(prob_fwd, BoxScores):
        extents = [e for e in (prob_fwd.extent(), prob_bwd.extent()) if e is not None]
        box = union(*extents) if extents else (slice(0, 0), slice(0, 0))
    else:
        box = (slice(0, prob_fwd.shape[-2]), slice(0, prob_fwd.shape[-1]))
    weight = fusion_weight(z, z_left, z_right, over(conf_fwd, box_fwd, box, 1.0),
                           over(conf_bwd, box_bwd, box, 1.0))
    if isinstance(prob_fwd, BoxScores):
        return prob_fwd.blend(prob_bwd, weight, box)
    return torch.lerp(prob_bwd, prob_fwd, torch.from_numpy(weight).to(prob_fwd))


def score_channels(scores: Scores) -> np.ndarray:
    """(H, W) int64: the argmax channel of the scores (ties: the lower channel)."""
    return score_top(scores)[0]


def score_top(scores: Scores, box: Box | None = None) -> tuple[np.ndarray, np.ndarray]:
    """int64 argmax channel and float32 winning score (for BoxScores the size-relative one,
    0 on background), over ``box`` of the slice (default: all of it)."""
    if isinstance(scores, BoxScores):
        return scores.top(box)
    if box is not None:
        scores = scores[:, box[0], box[1]]
    top = scores.max(0)
    return top.indices.cpu().numpy(), top.values.float().cpu().numpy()


def channel_disagreement(channels_a: np.ndarray, channels_b: np.ndarray) -> float:
    """Fraction of the pixels that either map (H, W) calls foreground (> 0) on which the two
    differ; 0 where both are all background."""
    foreground = (channels_a > 0) | (channels_b > 0)
    count = int(foreground.sum())
    return float(((channels_a != channels_b) & foreground).sum()) / count if count else 0.0


@dataclass
class PassOutput:
    """One slice of one pass: ``scores`` ((L, H, W) float32 tensor, or :class:`BoxScores`)
    and, where the engine has one, a per-pixel ``confidence`` float32 in (0, 1] over
    ``confidence_box`` of the slice (None: all of it; 1 outside it): an array, or a function
    that computes it over a box inside ``confidence_box`` (only where it is read:
    :meth:`confidence_over`)."""

    scores: Scores
    confidence: np.ndarray | Callable[[Box], np.ndarray] | None = None
    confidence_box: Box | None = None

    def confidence_over(self, box: Box) -> np.ndarray | None:
        """The confidence over ``box`` of the slice (1 outside ``confidence_box``), or None
        where the pass has none."""
        if self.confidence is None:
            return None
        if not callable(self.confidence):
            return over(self.confidence, self.confidence_box, box, 1.0)
        common = box if self.confidence_box is None else intersection(box,
                                                                      self.confidence_box)
        if common is None:
            return np.ones(box_size(box), np.float32)
        return over(self.confidence(common), common, box, 1.0)


def to_cpu_half(output: PassOutput) -> PassOutput:
    scores = output.scores
    if isinstance(scores, torch.Tensor):
        scores = scores.to("cpu", torch.float16)
    return replace(output, scores=scores)


def from_cpu_half(stored: PassOutput, like: PassOutput) -> PassOutput:
    scores = stored.scores
    if isinstance(scores, torch.Tensor):
        scores = scores.to(like.scores)
    return replace(stored, scores=scores)
