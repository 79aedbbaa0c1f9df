"""STCN propagation network (stateless; memory banks live in ``slicevos.inference``).
Importing this package registers ``stcn`` in the model registry."""

from slicevos.models.propagation.config import PropagationModelConfig
from slicevos.models.propagation.encoders import KeyFeatures
from slicevos.models.propagation.memory import l2_affinity, read_memory, readout, softmax_topk
from slicevos.models.propagation.network import (
    ClipOutput,
    PropagationNet,
    other_objects,
    soft_aggregate,
)

__all__ = [
    "ClipOutput", "KeyFeatures", "PropagationModelConfig", "PropagationNet", "l2_affinity",
    "other_objects", "read_memory", "readout", "soft_aggregate", "softmax_topk",
]
