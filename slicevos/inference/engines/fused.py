"""The ``fused`` engine: a network (``stcn`` or ``guided``) and the flow engine in one pass,
probabilities mixed.

Fused scores are probabilities: ``stcn_weight * p_stcn + (1 - stcn_weight) * p_flow``, where
``p_flow`` is the softmax over [background 0, the objects' signed distances / ``temperature``
pixels], mapped onto the network's channels (per_object: background + objects; joint: the K
classes). The flow pass's confidence weighs the two directions, as for flow alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from slicevos.inference.box_scores import Box
from slicevos.inference.engines.flow.engine import FlowPasses, FlowPropagator
from slicevos.inference.engines.guided import GuidedPasses, GuidedPropagator
from slicevos.inference.engines.mixing import NetworkAndFlowPasses, flow_probabilities
from slicevos.inference.engines.stcn.engine import Propagator, StcnPasses
from slicevos.inference.session import PassOutput, PropagationSession
from slicevos.preprocessing.windowing import Window


@dataclass(frozen=True)
class FusionWeights:
    """How ``fused`` mixes the engines: ``stcn_weight`` in [0, 1] on the STCN's probabilities;
    ``temperature`` (pixels) turns flow's signed distances into probabilities. How the
    default was chosen: docs/propagation.md."""

    stcn_weight: float = 0.1
    temperature: float = 2.0


class FusedPropagator:
    """Sessions whose passes run the STCN and the flow engine side by side (module doc)."""

    name = "fused"

    def __init__(self, stcn: Propagator | GuidedPropagator, flow: FlowPropagator,
                 windows: tuple[Window, ...], weights: FusionWeights | None = None) -> None:
        self.stcn, self.flow = stcn, flow
        self.windows = windows
        self.weights = weights or FusionWeights()
        if not 0 <= self.weights.stcn_weight <= 1 or self.weights.temperature <= 0:
            raise ValueError(f"fused needs stcn_weight in [0, 1] and temperature > 0, got "
                             f"{self.weights}")
        self.device = stcn.device
        self.keep_disagreement_map = stcn.keep_disagreement_map
        self.model = stcn.model

    def start(self, image: np.ndarray | torch.Tensor) -> PropagationSession:
        return PropagationSession(self.stcn.check_image(image), self.engine,
                                  self.keep_disagreement_map)

    def engine(self, session: PropagationSession) -> FusedPasses:
        learned = self.stcn.engine(session)
        flow = learned.flow if isinstance(learned, GuidedPasses) else self.flow.engine(session)
        return FusedPasses(learned, flow, self.weights)


class FusedPasses(NetworkAndFlowPasses):
    """The STCN and flow passes of one session, in lockstep."""

    def __init__(self, stcn: StcnPasses | GuidedPasses, flow: FlowPasses,
                 weights: FusionWeights) -> None:
        self.stcn, self.flow, self.weights = stcn, flow, weights
        self.network = stcn.stcn if isinstance(stcn, GuidedPasses) else stcn
        self.joint = self.network.net.joint

    def pixel_doubt(self, output: PassOutput, box: Box) -> np.ndarray | None:
        return self.stcn.pixel_doubt(output, box)


    def run_pass(self, start: int, other: int | None,
                 slices: range) -> Iterator[tuple[int, PassOutput]]:
        weight = self.weights.stcn_weight
        if isinstance(self.stcn, GuidedPasses):
            passes = self.stcn.run_pass_with_flow(start, other, slices)
        else:
            passes = ((z, learned, warped) for (z, learned), (_, warped) in zip(
                self.stcn.run_pass(start, other, slices),
                self.flow.run_pass(start, other, slices), strict=True))
        guided_scale = (self.network.net.config.prior_temperature
                        if isinstance(self.stcn, GuidedPasses) else None)
        for z, learned, warped in passes:
            flow = self._on_stcn_channels(flow_probabilities(warped.scores,
                                                             self.weights.temperature))
            probs = (learned.scores if guided_scale is None
                     else (learned.scores / guided_scale).softmax(0))
            mixed = weight * probs + (1 - weight) * flow.to(probs)
            yield z, PassOutput(mixed, warped.confidence, warped.confidence_box)

    def _on_stcn_channels(self, probs: torch.Tensor) -> torch.Tensor:
        """Flow's (O + 1) channels [background, *object_ids] -> the STCN's layout."""
        if not self.joint:
            return probs
        classes = torch.zeros((self.network.net.num_classes, *probs.shape[1:]))
        ids = [0, *self.network.session.object_ids]
        classes[ids] = probs
        return classes
