"""Propagation engines by name: ``flow``, ``stcn``, ``guided`` (a flow-guided STCN that
corrects the flow engine's proposal) and ``fused`` (a network and the flow engine in one
pass, probabilities mixed).

::

    propagator = build_propagator("flow")                       # no checkpoint needed
    propagator = build_propagator("stcn", "prop.pt")            # the trained network
    propagator = build_propagator("guided", "guided.pt")        # model.prior_input network
    propagator = build_propagator("fused", "prop.pt")           # either network + flow
    session = propagator.start(window_volume(hu, propagator.windows))

Guided: the flow pass and the STCN pass from a key run in lockstep; for each slice the
network gets the flow pass's signed distances of that slice as its prior (per object, or per
class in joint mode: background 0, classes not propagated far outside) and returns corrected
ones (its logits times ``prior_temperature``), with the flow pass's confidence: the session
mixes the two directions as it mixes flow's, so an untrained network reproduces flow. A checkpoint trained with the prior runs only as ``guided`` (or
``fused``), a plain one never as ``guided``.

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
from slicevos.inference.checkpoints import load_with_windows
from slicevos.inference.flow import FlowConfig, FlowPasses, FlowPropagator
from slicevos.inference.propagation import Propagator, StcnPasses, load_propagation_net
from slicevos.inference.session import PassEngine, PassOutput, PropagationSession
from slicevos.inference.slice_scale import NETWORK_UPSAMPLE_BELOW
from slicevos.preprocessing.windowing import Window

ENGINES = ("flow", "stcn", "guided", "fused")


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

    def keys_changed(self, z: int, objects_changed: bool) -> None:
        self.stcn.keys_changed(z, objects_changed)
        self.flow.keys_changed(z, objects_changed)

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        return self.stcn.label_lut(object_ids)


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

    def one_direction_uncertainty(self, output: PassOutput, channels: np.ndarray) -> float:
        return self.flow.one_direction_uncertainty(output, channels)

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
            yield z, PassOutput(learned.scores, warped.confidence), warped

    def run_pass(self, start: int, other: int | None,
                 slices: range) -> Iterator[tuple[int, PassOutput]]:
        for z, learned, _ in self.run_pass_with_flow(start, other, slices):
            yield z, learned


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

    def one_direction_uncertainty(self, output: PassOutput, channels: np.ndarray) -> float:
        return self.stcn.one_direction_uncertainty(output, channels)


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
            yield z, PassOutput(mixed, warped.confidence)

    def _on_stcn_channels(self, probs: torch.Tensor) -> torch.Tensor:
        """Flow's (O + 1) channels [background, *object_ids] -> the STCN's layout."""
        if not self.joint:
            return probs
        classes = torch.zeros((self.network.net.num_classes, *probs.shape[1:]))
        ids = [0, *self.network.session.object_ids]
        classes[ids] = probs
        return classes


def checkpoint_engine(checkpoint: str | PathLike) -> str:
    """The engine a propagation checkpoint runs as when none is named: ``guided`` for a
    flow-guided network, else ``stcn``."""
    payload, _ = load_with_windows(checkpoint, "propagation", "slicevos-train-propagation")
    return "guided" if payload["config"]["model"].get("prior_input", False) else "stcn"


def build_propagator(name: str, checkpoint: str | PathLike | None = None,
                     device: str | torch.device = "cpu", *, memory_every: int = 5,
                     max_memory_frames: int = 8, features_on_cpu: bool = False,
                     feature_cache_slices: int | None = None,
                     keep_disagreement_map: bool = False, flow: FlowConfig | None = None,
                     fusion: FusionWeights | None = None,
                     upsample_below: int = NETWORK_UPSAMPLE_BELOW):
    """The propagator called ``name`` (flow | stcn | guided | fused). ``stcn``, ``guided`` and
    ``fused`` need a propagation ``checkpoint`` (``guided`` one trained with
    ``model.prior_input``, ``stcn`` one without; ``fused`` takes either); ``flow`` takes none
    (a checkpoint given to it is refused, so a user never believes a model ran when it did
    not). The image a session is started on must be windowed with the returned propagator's
    ``windows``. ``upsample_below``: the network runs slices smaller than that many pixels on
    a finer grid (``slicevos.inference.slice_scale``)."""
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
    guided = net.config.prior_input
    if name == "stcn" and guided:
        raise InputError(checkpoint, "is a flow-guided STCN (trained with the flow prior "
                         "input), the stcn engine cannot give it that prior",
                         "use --propagator guided or fused with this checkpoint")
    if name == "guided" and not guided:
        raise InputError(checkpoint, "is a plain STCN (no flow prior input), the guided "
                         "engine needs a flow-guided one", "use --propagator stcn or fused, "
                         "or train one with --set model.prior_input=true")
    stcn = Propagator(net, device, memory_every, max_memory_frames,
                      features_on_cpu=features_on_cpu,
                      feature_cache_slices=feature_cache_slices,
                      keep_disagreement_map=keep_disagreement_map, windows=windows,
                      upsample_below=upsample_below)
    if name == "stcn":
        return stcn
    flow_propagator = FlowPropagator(flow, keep_disagreement_map)
    learned = GuidedPropagator(stcn, flow_propagator) if guided else stcn
    if name == "guided":
        return learned
    return FusedPropagator(learned, flow_propagator, windows, fusion)
