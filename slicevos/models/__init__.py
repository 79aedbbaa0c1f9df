"""Networks, built by name: ``build_model(ModelConfig(name, position_encoding, params),
num_classes, in_channels)``; ``available_models()`` lists the names."""

from slicevos.models import reference  # noqa: F401  (importing it registers the reference networks)
from slicevos.models.config import ModelConfig
from slicevos.models.registry import available_models, build_model, register_model

__all__ = ["ModelConfig", "available_models", "build_model", "register_model"]
