"""The ``guided`` engine: a flow-guided STCN.

Guided: the flow pass and the STCN pass from a key run in lockstep; for each slice the
network gets the flow pass's signed distances of that slice as its prior (per object, or per
class in joint mode: background 0, classes not propagated far outside) and returns corrected
ones (its logits times ``prior_temperature``), with the flow pass's confidence: the session
mixes the two directions as it mixes flow's, so an untrained network reproduces flow. A checkpoint trained with the prior runs only as ``guided`` (or
``fused``), a plain one never as ``guided``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from slicevos.inference.box_scores import Box
from slicevos.inference.engines.flow.engine import FlowPasses, FlowPropagator
from slicevos.inference.engines.mixing import NetworkAndFlowPasses, prior_on_network_channels
from slicevos.inference.engines.stcn.engine import Propagator, StcnPasses
from slicevos.inference.session import PassOutput, PropagationSession


class GuidedPropagator:
    """Sessions of the flow-guided STCN (module doc): ``stcn`` holds the prior-input network."""

    name = "guided"

    def __init__(self, stcn: Propagator, flow: FlowPropagator) -> None:
        self.stcn, self.flow = stcn, flow
        self.windows = stcn.windows or flow.windows
        self.device = stcn.device
        self.keep_disagreement_map = stcn.keep_disagreement_map
        self.model = stcn.model

    def check_image(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.stcn.check_image(image)

    def start(self, image: np.ndarray | torch.Tensor) -> PropagationSession:
        return PropagationSession(self.check_image(image), self.engine,
                                  self.keep_disagreement_map)

    def engine(self, session: PropagationSession) -> GuidedPasses:
        return GuidedPasses(self.stcn.engine(session), self.flow.engine(session))


class GuidedPasses(NetworkAndFlowPasses):
    """The flow and STCN passes of one session in lockstep, the flow pass feeding the STCN."""

    def __init__(self, stcn: StcnPasses, flow: FlowPasses) -> None:
        self.stcn, self.flow = stcn, flow
        net = stcn.net
        self.joint_classes = net.num_classes if net.joint else None
        self.floor = -flow.config.clip

    def pixel_doubt(self, output: PassOutput, box: Box) -> np.ndarray | None:
        return self.flow.pixel_doubt(output, box)

    def run_pass_with_flow(self, start: int, other: int | None, slices: range
                           ) -> Iterator[tuple[int, PassOutput, PassOutput]]:
        """(z, the network's output, the flow pass's output) per slice. The network's scores
        are in the flow engine's units (signed distance in pixels, see
        ``StcnPasses.run_pass``) and carry the flow pass's confidence, so the session mixes
        the directions exactly as for flow: an untrained network gives flow's labels."""
        warped_passes = self.flow.run_pass(start, other, slices)
        current: dict[int, PassOutput] = {}
        session = self.stcn.session

        def prior(z: int) -> torch.Tensor:
            flow_z, warped = next(warped_passes)
            if flow_z != z:
                raise RuntimeError(f"flow pass at slice {flow_z}, STCN pass at {z}")
            current[z] = warped
            return prior_on_network_channels(warped.scores, self.joint_classes,
                                             session.object_ids, self.floor)

        for z, learned in self.stcn.run_pass(start, other, slices, prior, self.floor):
            warped = current.pop(z)
            yield z, PassOutput(learned.scores, warped.confidence, warped.confidence_box), warped

    def run_pass(self, start: int, other: int | None,
                 slices: range) -> Iterator[tuple[int, PassOutput]]:
        for z, learned, _ in self.run_pass_with_flow(start, other, slices):
            yield z, learned
