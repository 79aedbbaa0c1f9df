"""Propagation engines by name, and ``fused``: the STCN and the flow engine in one pass.

::

    propagator = build_propagator("flow")                       # no checkpoint needed
    propagator = build_propagator("stcn", "prop.pt")            # the trained network
    propagator = build_propagator("fused", "prop.pt")           # both, probabilities mixed
    session = propagator.start(window_volume(hu, propagator.windows))

Every propagator has ``name``, ``windows`` (the CT windows its image must be made with),
``device``, ``keep_disagreement_map`` and ``start(image) -> PropagationSession``.

Fused scores are probabilities: ``stcn_weight * p_stcn + (1 - stcn_weight) * p_flow``, where
``p_flow`` is the softmax over [background 0, the objects' signed distances / ``temperature``
pixels], mapped onto the network's channels (per_object: background + objects; joint: the K
classes). The flow pass's confidence weighs the two directions, as for flow alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike

import numpy as np
import torch

from slicevos.errors import InputError
from slicevos.inference.box_scores import BoxScores
from slicevos.inference.flow import FlowConfig, FlowPasses, FlowPropagator
from slicevos.inference.propagation import Propagator, StcnPasses, load_propagation_net
from slicevos.inference.session import PassEngine, PassOutput, PropagationSession
from slicevos.preprocessing.windowing import Window

ENGINES = ("flow", "stcn", "fused")


@dataclass(frozen=True)
class FusionWeights:
    """How ``fused`` mixes the engines: ``stcn_weight`` in [0, 1] on the STCN's probabilities;
    ``temperature`` (pixels) turns flow's signed distances into probabilities. Default 0.1,
    the best of 0.1 / 0.3 / 0.5 measured with the only STCN there is (the phantom-trained
    demo model) on aorta_report_crop, example_ct_dicom20 and example_ct_full112: mean DSC
    0.716 / 0.462 / 0.164 at keys every 10, against 0.819 for flow alone and 0.103 for the
    STCN alone; re-measure with a real-CT model (``--stcn-weights``)."""

    stcn_weight: float = 0.1
    temperature: float = 2.0


def flow_probabilities(scores: BoxScores, temperature: float) -> torch.Tensor:
    """(O + 1, H, W) float32 softmax of the flow scores / ``temperature`` (background 0)."""
    return (scores.dense() / temperature).softmax(0)


class FusedPropagator:
    """Sessions whose passes run the STCN and the flow engine side by side (module doc)."""

    name = "fused"

    def __init__(self, stcn: Propagator, flow: FlowPropagator, windows: tuple[Window, ...],
                 weights: FusionWeights | None = None) -> None:
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
        return FusedPasses(self.stcn.engine(session), self.flow.engine(session), self.weights)


class FusedPasses(PassEngine):
    """The STCN and flow passes of one session, in lockstep."""

    def __init__(self, stcn: StcnPasses, flow: FlowPasses, weights: FusionWeights) -> None:
        self.stcn, self.flow, self.weights = stcn, flow, weights
        self.joint = stcn.net.joint

    def check_key(self, z: int, labels: np.ndarray) -> None:
        self.stcn.check_key(z, labels)

    def keys_changed(self, z: int, objects_changed: bool) -> None:
        self.stcn.keys_changed(z, objects_changed)
        self.flow.keys_changed(z, objects_changed)

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        return self.stcn.label_lut(object_ids)

    def one_direction_uncertainty(self, output: PassOutput, channels: np.ndarray) -> float:
        return self.stcn.one_direction_uncertainty(output, channels)


    def run_pass(self, start: int, other: int | None,
                 slices: range) -> Iterator[tuple[int, PassOutput]]:
        weight = self.weights.stcn_weight
        passes = zip(self.stcn.run_pass(start, other, slices),
                     self.flow.run_pass(start, other, slices), strict=True)
        for (z, learned), (_, warped) in passes:
            flow = self._on_stcn_channels(flow_probabilities(warped.scores,
                                                             self.weights.temperature))
            mixed = weight * learned.scores + (1 - weight) * flow.to(learned.scores)
            yield z, PassOutput(mixed, warped.confidence)

    def _on_stcn_channels(self, probs: torch.Tensor) -> torch.Tensor:
        """Flow's (O + 1) channels [background, *object_ids] -> the STCN's layout."""
        if not self.joint:
            return probs
        classes = torch.zeros((self.stcn.net.num_classes, *probs.shape[1:]))
        ids = [0, *self.stcn.session.object_ids]
        classes[ids] = probs
        return classes


def build_propagator(name: str, checkpoint: str | PathLike | None = None,
                     device: str | torch.device = "cpu", *, memory_every: int = 5,
                     max_memory_frames: int = 8, features_on_cpu: bool = False,
                     feature_cache_slices: int | None = None,
                     keep_disagreement_map: bool = False, flow: FlowConfig | None = None,
                     fusion: FusionWeights | None = None):
    """The propagator called ``name`` (flow | stcn | fused). ``stcn`` and ``fused`` need a
    propagation ``checkpoint``; ``flow`` takes none (a checkpoint given to it is refused, so a
    user never believes a model ran when it did not). The image a session is started on must
    be windowed with the returned propagator's ``windows``."""
    if name not in ENGINES:
        raise InputError(None, f"unknown propagation engine {name!r}",
                         f"choose one of {', '.join(ENGINES)}")
    if name == "flow":
        if checkpoint is not None:
            raise InputError(checkpoint, "the flow engine takes no checkpoint",
                             "drop the checkpoint, or choose the stcn or fused engine")
        return FlowPropagator(flow, keep_disagreement_map)
    if checkpoint is None:
        raise InputError(None, f"the {name} engine needs a propagation checkpoint",
                         "pass --propagation PROP.pt, or use --propagator flow")
    net, windows = load_propagation_net(checkpoint, device)
    stcn = Propagator(net, device, memory_every, max_memory_frames,
                      features_on_cpu=features_on_cpu,
                      feature_cache_slices=feature_cache_slices,
                      keep_disagreement_map=keep_disagreement_map, windows=windows)
    if name == "stcn":
        return stcn
    return FusedPropagator(stcn, FlowPropagator(flow, keep_disagreement_map), windows, fusion)
