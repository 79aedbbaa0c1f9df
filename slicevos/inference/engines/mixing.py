"""What the engines that run a network beside the flow engine share (``guided``, ``fused``):
the flow scores as probabilities or as a network prior, and one pass engine over both."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from slicevos.inference.box_scores import BoxScores
from slicevos.inference.engines.flow.engine import FlowPasses
from slicevos.inference.session import PassEngine


def flow_probabilities(scores: BoxScores, temperature: float) -> torch.Tensor:
    """(O + 1, H, W) float32 softmax of the flow scores / ``temperature`` (background 0)."""
    return (scores.dense() / temperature).softmax(0)


def prior_on_network_channels(scores: BoxScores, joint_classes: int | None,
                              object_ids: Sequence[int], floor: float) -> torch.Tensor:
    """Flow scores [background, *objects] of a pass -> the network's prior layout: (O, H, W)
    object distances (per_object) or (K, H, W) class distances (joint; background 0,
    classes not propagated ``floor``, far outside)."""
    dense = scores.dense()
    if joint_classes is None:
        return dense[1:]
    classes = torch.full((joint_classes, *dense.shape[1:]), floor, dtype=dense.dtype)
    classes[[0, *object_ids]] = dense
    return classes


class NetworkAndFlowPasses(PassEngine):
    """Pass engines that run a network's passes (``stcn``) and the flow engine's (``flow``)
    of one session together: keys are checked and labelled the network's way, and a key
    change reaches both."""

    stcn: PassEngine
    flow: FlowPasses

    def check_key(self, z: int, labels: np.ndarray) -> None:
        self.stcn.check_key(z, labels)

    def keys_changed(self, z: int, objects_changed: bool) -> tuple[int, int]:
        stcn, flow = (self.stcn.keys_changed(z, objects_changed),
                      self.flow.keys_changed(z, objects_changed))
        return max(stcn[0], flow[0]), max(stcn[1], flow[1])

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        return self.stcn.label_lut(object_ids)

    def work_ahead(self, stop: threading.Event) -> None:
        self.stcn.work_ahead(stop)
        self.flow.work_ahead(stop)
