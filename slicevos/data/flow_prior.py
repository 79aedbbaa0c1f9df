"""The flow prior of a training clip: frame 0's object masks warped onto the later frames.

A flow-guided STCN (``model.prior_input``) is given, for every frame it segments, what the
flow engine would propose there, and learns to correct it. In a training clip the prior of
frame ``t`` is frame 0's per-object signed distance (pixels, clipped to ``±clip``) warped
through the flows between *adjacent* slices from frame ``t`` back to frame 0, composed into
one map (as the flow engine does), on the (augmented, cropped) slices and the image channel
the flow engine reads: the same construction as the prior the network gets at inference.
What differs is the context: a training clip has one key and frames up to
``2 * data.max_gap_end`` slices away, where organs often end, while a session's passes run
between two keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from slicevos.data.optical_flow import (
    FlowSettings,
    SliceFlow,
    compose,
    identity_map,
    signed_distance,
)


def clip_flow_prior(images: np.ndarray, first_masks: np.ndarray, settings: FlowSettings,
                    clip: float, at: Sequence[int] | None = None) -> np.ndarray:
    """Signed-distance priors (len(at), O, H, W) float32 of the slices ``at``.

    ``images`` uint8 (S, C, H, W): the adjacent slices from frame 0 (first) on, in pass
    order; ``at``: the rows of ``images`` to return priors for (default all but row 0);
    ``first_masks`` (O, H, W) bool or {0, 1}, frame 0's object slots (an empty slot, a padding
    object, scores ``-clip`` everywhere). The flow reads channel ``settings.channel`` (-1: the
    mean of the channels).
    """
    frames, _, height, width = images.shape
    at = list(range(1, frames)) if at is None else list(at)
    grey = (images.mean(1).round().astype(np.uint8) if settings.channel < 0
            else images[:, settings.channel])
    distances = [np.clip(signed_distance(m > 0), -clip, clip) if m.any()
                 else np.full((height, width), -clip, np.float32) for m in first_masks]
    flow = SliceFlow(settings, height, width)
    grid = identity_map(height, width)
    mapping = grid
    priors = np.empty((len(at), len(distances), height, width), np.float32)
    for t in range(max(at, default=0) + 1):
        if t > 0:
            mapping = compose(mapping, flow(grey[t], grey[t - 1]), grid)
        for row in (row for row, wanted in enumerate(at) if wanted == t):
            for o, distance in enumerate(distances):
                priors[row, o] = cv2.remap(distance, mapping, None, cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=-clip)
    return priors
