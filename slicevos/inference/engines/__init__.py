"""Propagation engines by name: ``flow``, ``stcn``, ``guided`` (a flow-guided STCN that
corrects the flow engine's proposal) and ``fused`` (a network and the flow engine in one
pass, probabilities mixed).

::

    propagator = build_propagator("flow")                       # no checkpoint needed
    propagator = build_propagator("stcn", "prop.pt")            # the trained network
    propagator = build_propagator("guided", "guided.pt")        # model.prior_input network
    propagator = build_propagator("fused", "prop.pt")           # either network + flow
    session = propagator.start(window_volume(hu, propagator.windows))

One subpackage or module per engine: ``flow/`` (optical flow, no training), ``stcn/`` (the
memory network), ``guided.py`` and ``fused.py`` (a network beside flow, sharing
``mixing.py``). The session (``slicevos.inference.session``) knows none of them: an engine
is a propagator whose ``start`` returns a ``PropagationSession`` driven by its pass engine.

Every propagator has ``name``, ``windows`` (the CT windows its image must be made with),
``device``, ``keep_disagreement_map`` and ``start(image) -> PropagationSession``.
"""

from __future__ import annotations

from os import PathLike

import torch

from slicevos.errors import InputError
from slicevos.inference.checkpoints import load_with_windows
from slicevos.inference.engines.flow.engine import FlowConfig, FlowPropagator
from slicevos.inference.engines.fused import FusedPropagator, FusionWeights
from slicevos.inference.engines.guided import GuidedPropagator
from slicevos.inference.engines.stcn.engine import Propagator, load_propagation_net
from slicevos.inference.engines.stcn.slice_scale import NETWORK_UPSAMPLE_BELOW

__all__ = ["ENGINES", "FusionWeights", "build_propagator", "checkpoint_engine"]

ENGINES = ("flow", "stcn", "guided", "fused")


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
    a finer grid (``slicevos.inference.engines.stcn.slice_scale``)."""
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
