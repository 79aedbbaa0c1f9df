"""Build segmentation networks by name (timm ``@register_model`` / smp ``create_model`` style).

A model factory is registered with ``@register_model("name")`` and has the signature
``factory(num_classes: int, in_channels: int, position_encoding: bool, **params) -> nn.Module``.
``build_model(ModelConfig(name, position_encoding, params), num_classes, in_channels)`` calls it.
The returned network offers ``forward(images, positions) -> logits`` (B, K, H, W) and the
attributes ``output_stride``, ``num_classes`` and ``in_channels``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from slicevos.errors import InputError
from slicevos.models.config import ModelConfig

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, Factory] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: register ``factory`` under ``name`` (names are unique)."""

    def decorate(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build the network ``cfg.name`` with ``num_classes`` outputs (background included)."""
    if cfg.name not in _REGISTRY:
        raise InputError(None, f"unknown model {cfg.name!r}",
                         f"use one of {available_models()}")
    if num_classes < 2:
        raise InputError(None, f"num_classes must be >= 2 (background + classes), got {num_classes}",
                         "pass schema.num_classes")
    return _REGISTRY[cfg.name](num_classes=num_classes, in_channels=in_channels,
                               position_encoding=cfg.position_encoding, **dict(cfg.params))
