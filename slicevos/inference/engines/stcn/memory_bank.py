"""Memory of a propagation pass and the per-slice key-encoder feature cache.

:class:`MemoryBank` holds the memory of one propagation pass (one direction through one
segment): its key frames (always kept) and recent frames (at most ``max_recent``, the oldest
dropped first). Frames are stored as key (Ck, h, w) + value (O, Cv, h, w), optionally in half
precision and/or on the CPU; :meth:`MemoryBank.stacked` returns them stacked in the layout of
``PropagationNet.read_memory`` on the compute device (rebuilt only when the frames change).

:class:`FeatureCache` keeps ``KeyFeatures`` per slice index so each slice is key-encoded once
and shared by both directions and by later re-propagations. Full cache by default; with
``max_slices`` it is an LRU (least recently used slices evicted and re-encoded on demand).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import torch

from slicevos.models.propagation import KeyFeatures


@dataclass
class MemoryFrame:
    """One slice in the memory: ``z`` its index, ``key`` (Ck, h, w), ``value`` (O, Cv, h, w)."""

    z: int
    key: torch.Tensor
    value: torch.Tensor


class MemoryBank:
    """Key frames (kept for the whole pass) + at most ``max_recent`` recent frames (FIFO).

    ``storage_dtype`` / ``storage_device``: how frames are kept (e.g. float16 on the CPU for
    long volumes); ``compute_dtype`` / ``compute_device``: what :meth:`stacked` returns.
    """

    def __init__(self, max_recent: int, compute_device: torch.device | str = "cpu",
                 compute_dtype: torch.dtype = torch.float32,
                 storage_dtype: torch.dtype | None = None,
                 storage_device: torch.device | str | None = None) -> None:
        if max_recent < 0:
            raise ValueError(f"max_recent must be >= 0, got {max_recent}")
        self.max_recent = max_recent
        self.compute_device = torch.device(compute_device)
        self.compute_dtype = compute_dtype
        self.storage_dtype = storage_dtype or compute_dtype
        self.storage_device = torch.device(storage_device or compute_device)
        self.key_frames: list[MemoryFrame] = []
        self.recent_frames: deque[MemoryFrame] = deque()
        self._stacked: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.key_frames) + len(self.recent_frames)

    @property
    def frame_indices(self) -> list[int]:
        """Slice indices in memory order: key frames, then recent frames oldest first."""
        return [frame.z for frame in (*self.key_frames, *self.recent_frames)]

    def add_key(self, z: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Add a key frame (never dropped). ``key`` (Ck, h, w), ``value`` (O, Cv, h, w)."""
        self.key_frames.append(self._frame(z, key, value))
        self._stacked = None

    def add_recent(self, z: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Add a recent frame; beyond ``max_recent`` recent frames the oldest is dropped."""
        if self.max_recent == 0:
            return
        self.recent_frames.append(self._frame(z, key, value))
        while len(self.recent_frames) > self.max_recent:
            self.recent_frames.popleft()
        self._stacked = None

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys (1, Ck, T, h, w), values (1, O, Cv, T, h, w)) on the compute device."""
        if not self:
            raise RuntimeError("the memory bank is empty: add a key frame first")
        if self._stacked is None:
            frames = [*self.key_frames, *self.recent_frames]
            keys = torch.stack([f.key for f in frames], dim=1).unsqueeze(0)
            values = torch.stack([f.value for f in frames], dim=2).unsqueeze(0)
            self._stacked = (self._to_compute(keys), self._to_compute(values))
        return self._stacked

    def _frame(self, z: int, key: torch.Tensor, value: torch.Tensor) -> MemoryFrame:
        if key.ndim != 3 or value.ndim != 4 or key.shape[1:] != value.shape[2:]:
            raise ValueError(f"memory frame needs key (Ck, h, w) and value (O, Cv, h, w) on the "
                             f"same grid, got {tuple(key.shape)} and {tuple(value.shape)}")
        store = {"device": self.storage_device, "dtype": self.storage_dtype}
        return MemoryFrame(z, key.detach().to(**store), value.detach().to(**store))

    def _to_compute(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.compute_device, dtype=self.compute_dtype)


class FeatureCache:
    """Key-encoder features per slice index, stored in ``dtype`` on ``device`` and returned
    in ``compute_dtype`` on ``compute_device``. ``max_slices`` None: keep every slice (full
    cache); otherwise an LRU of that many slices."""

    def __init__(self, compute_device: torch.device | str, compute_dtype: torch.dtype,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 max_slices: int | None = None) -> None:
        if max_slices is not None and max_slices < 1:
            raise ValueError(f"max_slices must be >= 1 or None, got {max_slices}")
        self.compute_device = torch.device(compute_device)
        self.compute_dtype = compute_dtype
        self.dtype = dtype or compute_dtype
        self.device = torch.device(device or compute_device)
        self.max_slices = max_slices
        self._items: OrderedDict[int, KeyFeatures] = OrderedDict()

    def __contains__(self, z: int) -> bool:
        return z in self._items

    def __len__(self) -> int:
        return len(self._items)

    def put(self, z: int, features: KeyFeatures) -> None:
        """Store the features of one slice (batch size 1)."""
        self._items[z] = _convert(features, self.device, self.dtype)
        self._items.move_to_end(z)
        while self.max_slices is not None and len(self._items) > self.max_slices:
            self._items.popitem(last=False)

    def get(self, z: int) -> KeyFeatures:
        """The features of slice ``z`` (batch size 1) on the compute device; KeyError if absent."""
        self._items.move_to_end(z)
        return _convert(self._items[z], self.compute_device, self.compute_dtype)


def _convert(features: KeyFeatures, device: torch.device, dtype: torch.dtype) -> KeyFeatures:
    def move(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype)

    return KeyFeatures(move(features.key), move(features.f16), move(features.f8),
                       move(features.f4))
