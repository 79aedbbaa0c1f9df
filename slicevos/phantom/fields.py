"""Phantom building blocks: the voxel grid in millimetres and smooth random fields.

The phantom's anatomy lives in a patient frame in mm with the canonical axis order of
``slicevos.io.volume``: ``z`` inferior -> superior (axis 0), ``y`` anterior -> posterior
(axis 1), ``x`` patient right -> left (axis 2). ``x = y = 0`` is the centre of every slice; z is
an anatomical height (0 is about the L1/L2 disc). Arrays of points are ordered ``(z, y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel centres of a canonical ``(D, H, W)`` grid in the patient frame (mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    z_center: float

    @cached_property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates (float32 vectors) along z, y and x."""
        centres = (self.z_center, 0.0, 0.0)
        return tuple(
            ((np.arange(n) - (n - 1) / 2) * s + c).astype(np.float32)
            for n, s, c in zip(self.shape, self.spacing, centres, strict=True)
        )

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """Index slices of the voxels whose centres lie in ``[lo, hi]`` (mm); None if empty."""
        out = []
        for axis, n, s, a, b in zip(self.axes, self.shape, self.spacing, lo, hi, strict=True):
            first = float(axis[0])
            i0 = max(int(np.ceil((a - first) / s)), 0)
            i1 = min(int(np.floor((b - first) / s)) + 1, n)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(axis[sl] for axis, sl in zip(self.axes, box, strict=True))

    @cached_property
    def plane(self) -> tuple[np.ndarray, np.ndarray]:
        """2D ``(H, W)`` coordinate arrays ``(y, x)`` of one slice."""
        _, y, x = self.axes
        return np.broadcast_to(y[:, None], self.shape[1:]), np.broadcast_to(x[None, :], self.shape[1:])


@dataclass(frozen=True)
class SmoothField:
    """A smooth random field in mm: Gaussian bumps (sigma = ``step``) on a regular lattice.

    The lattice and its random weights are fixed when the field is made, so sampling it on any
    grid (size, spacing) gives the same underlying field. ``values`` is ``(C, nz, ny, nx)``;
    ``sample`` returns ``(C, len(z), len(y), len(x))`` with a standard deviation of about the
    ``amplitude`` the field was made with.
    """

    origin: tuple[float, float, float]
    step: float
    values: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, step: float,
               amplitude: float, channels: int = 1) -> SmoothField:
        """Field over the box ``[lo, hi]`` (mm, (z, y, x)); zero far outside it."""
        lo = np.asarray(lo, np.float64) - 3 * step
        hi = np.asarray(hi, np.float64) + 3 * step
        n = np.ceil((hi - lo) / step).astype(int) + 1
        # sum_k exp(-d_k^2) ~ sqrt(pi) per axis, so the field's variance is pi^1.5 * var(values)
        values = rng.standard_normal((channels, *n)).astype(np.float32) * (amplitude / np.pi**0.75)
        return cls(tuple(float(v) for v in lo), float(step), values)

    def _weights(self, axis: int, coords: np.ndarray) -> tuple[np.ndarray, slice]:
        nodes = self.origin[axis] + self.step * np.arange(self.values.shape[axis + 1])
        d = (np.asarray(coords, np.float64)[:, None] - nodes[None, :]) / self.step
        near = np.flatnonzero((np.abs(d) < 4).any(axis=0))
        if near.size == 0:
            return np.zeros((len(coords), 0), np.float32), slice(0, 0)
        keep = slice(int(near[0]), int(near[-1]) + 1)
        return np.exp(-0.5 * d[:, keep] ** 2).astype(np.float32), keep

    def sample(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Field at the grid ``z x y x x`` (1D coordinate vectors, mm) -> ``(C, nz, ny, nx)``."""
        (wz, kz), (wy, ky), (wx, kx) = (self._weights(i, c) for i, c in enumerate((z, y, x)))
        v = self.values[:, kz, ky, kx]
        c = v.shape[0]
        v = np.matmul(wz, v.reshape(c, v.shape[1], -1)).reshape(c, len(z), v.shape[2], v.shape[3])
        v = np.matmul(wy, v)  # (C, Z, Y, nx)
        return np.matmul(v, wx.T)  # (C, Z, Y, X)
