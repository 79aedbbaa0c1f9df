"""Shared behaviour of the typed batches (``SliceBatch``, ``ClipBatch``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, TypeVar

import torch

B = TypeVar("B", bound="TensorBatch")


class TensorBatch:
    """Mixin for batch dataclasses: move or pin every tensor field, leave the rest alone."""

    def _map(self: B, fn: Callable[[torch.Tensor], torch.Tensor]) -> B:
        changes: dict[str, Any] = {f.name: fn(getattr(self, f.name)) for f in fields(self)
                                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **changes)

    def to(self: B, device: torch.device | str, non_blocking: bool = False) -> B:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self: B) -> B:
        """Used by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())
