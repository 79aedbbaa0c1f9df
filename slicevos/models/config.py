"""Model configuration: which network to build, by registry name, and its keyword arguments.

YAML form (``params`` keys are model-specific; unknown keys are an error naming the key)::

    name: transunet
    position_encoding: true
    params: {vit_depth: 12, decoder_channels: [256, 128, 64, 16]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """``name``: a registered model (``slicevos.models.available_models()``);
    ``position_encoding``: condition the decoder on the relative slice position (False: the
    ``positions`` argument is accepted and ignored, for ablation); ``params``: keyword
    arguments of that model's parameter dataclass (defaults = the paper's network)."""

    name: str
    position_encoding: bool = True
    params: dict[str, Any] = field(default_factory=dict)
