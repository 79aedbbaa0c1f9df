"""Implicit 3D shapes of the phantom, evaluated on boxes of the voxel grid.

Every shape gives a normalised *depth*: 0 on its core, 1 on its surface, > 1 outside. Shapes
are defined in the patient frame (mm, points ordered ``(z, y, x)``; see ``phantom_fields``), so
the same shape sampled on any grid is the same anatomy. An optional smooth displacement field
(``warp``) deforms the whole shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from slicevos.phantom.fields import SmoothField

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def sub_box(axes: Coords, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
    """Index slices of the sorted coordinate vectors ``axes`` that fall in ``[lo, hi]``."""
    out = tuple(slice(*np.searchsorted(ax, (a, b), side="left").tolist())
                for ax, a, b in zip(axes, lo, hi, strict=True))
    return None if any(s.stop <= s.start for s in out) else out


def _part_depth(part: Shape, out: np.ndarray, pts: Coords, axes: Coords, margin: float,
                combine: str) -> None:
    """Combine ``part``'s depth into ``out`` on the part's own sub-box only."""
    lo, hi = part.extent()
    sub = sub_box(axes, lo - margin, hi + margin)
    if sub is None:
        return
    d = part._depth(tuple(p[sub] for p in pts), tuple(a[s] for a, s in zip(axes, sub, strict=True)),
                    margin)
    if combine == "min":
        np.minimum(out[sub], d, out=out[sub])
    else:  # subtract: max(base, 2 - cut)
        np.maximum(out[sub], np.subtract(2.0, d, out=d), out=out[sub])


def rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix acting on ``(z, y, x)`` vectors: angles about the z, y and x axes."""
    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


@dataclass(frozen=True)
class Shape:
    """Base class: bounds in mm (undeformed) plus an optional warp of at most ``warp_mm``."""

    warp: SmoothField | None = field(default=None, kw_only=True)
    warp_mm: float = field(default=0.0, kw_only=True)

    def extent(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.extent()
        return lo - self.warp_mm, hi + self.warp_mm

    def depth(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Normalised depth on the box ``z x y x x`` (1D vectors, mm) -> float32 3D array."""
        shape = (len(z), len(y), len(x))
        pts = [np.broadcast_to(np.asarray(c, np.float32).reshape(s), shape)
               for c, s in zip((z, y, x), ((-1, 1, 1), (1, -1, 1), (1, 1, -1)), strict=True)]
        if self.warp is not None:
            u = self.warp.sample(z, y, x)
            np.clip(u, -self.warp_mm, self.warp_mm, out=u)
            for p, d in zip(pts, u, strict=True):
                d += p
            pts = list(u)
        return self._depth(tuple(pts), (z, y, x), self.warp_mm)

    def _depth(self, pts: Coords, axes: Coords, margin: float) -> np.ndarray:  # pragma: no cover
        """Depth at the (displaced) points ``pts``; ``axes`` are the undisplaced grid vectors
        and ``margin`` the largest displacement (parts use them to skip far-away voxels)."""
        raise NotImplementedError

    def interior_point(self, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Ellipsoid(Shape):
    center: np.ndarray  # (z, y, x) mm
    semi_axes: np.ndarray  # (z, y, x) mm, before rotation
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt((self.rot**2) @ (np.asarray(self.semi_axes) ** 2))
        return self.center - half, self.center + half

    def _depth(self, pts: Coords, axes: Coords, margin: float) -> np.ndarray:
        # |A^-1 R^T rel| as the quadratic form rel^T M rel, M = R A^-2 R^T, with few temporaries
        m = (self.rot / np.asarray(self.semi_axes) ** 2) @ self.rot.T
        r0, r1, r2 = (np.subtract(p, np.float32(c), dtype=np.float32)
                      for p, c in zip(pts, self.center, strict=True))
        tmp = np.empty_like(r0)
        acc = np.multiply(r0, np.float32(m[0, 0]))
        acc += np.multiply(r1, np.float32(2 * m[0, 1]), out=tmp)
        acc += np.multiply(r2, np.float32(2 * m[0, 2]), out=tmp)
        acc *= r0
        np.multiply(r1, np.float32(m[1, 1]), out=tmp)
        tmp += np.multiply(r2, np.float32(2 * m[1, 2]), out=r0)
        tmp *= r1
        acc += tmp
        np.multiply(r2, r2, out=r0)
        r0 *= np.float32(m[2, 2])
        acc += r0
        np.maximum(acc, 0, out=acc)
        return np.sqrt(acc, out=acc)

    def interior_point(self, rng: np.random.Generator) -> np.ndarray:
        v = rng.normal(size=3)
        v *= rng.uniform(0, 0.6) / np.linalg.norm(v)
        return self.center + self.rot @ (self.semi_axes * v)


@dataclass(frozen=True)
class Tube(Shape):
    """A chain of tapered capsules through ``points`` (K, 3) with ``radii`` (K,).

    ``squash`` scales the cross-section per axis (e.g. ``(1, 0.7, 1)`` flattens it along y).
    """

    points: np.ndarray
    radii: np.ndarray
    squash: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        r = np.asarray(self.squash) * float(np.max(self.radii))
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r

    def _depth(self, pts: Coords, axes: Coords, margin: float) -> np.ndarray:
        inv = [1.0 / s for s in self.squash]
        out = np.full(pts[0].shape, np.inf, np.float32)
        reach = np.asarray(self.squash) * float(np.max(self.radii)) + margin
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1],
                                self.radii[1:], strict=True):
            sub = sub_box(axes, np.minimum(a, b) - reach, np.maximum(a, b) + reach)
            if sub is None:
                continue
            w = [(p[sub] - a_i) * k for p, a_i, k in zip(pts, a, inv, strict=True)]
            v = (b - a) * np.asarray(inv)
            t = (w[0] * v[0] + w[1] * v[1] + w[2] * v[2]) * (1.0 / max(float(v @ v), 1e-9))
            np.clip(t, 0.0, 1.0, out=t)
            dist2 = sum((wi - t * vi) ** 2 for wi, vi in zip(w, v, strict=True))
            d = np.sqrt(dist2) / (ra + t * (rb - ra))
            np.minimum(out[sub], d, out=out[sub])
        return out

    def interior_point(self, rng: np.random.Generator) -> np.ndarray:
        k = int(rng.integers(len(self.points) - 1))
        t = rng.uniform(0.2, 0.8)
        return self.points[k] + t * (self.points[k + 1] - self.points[k])


@dataclass(frozen=True)
class Union(Shape):
    parts: tuple[Shape, ...]

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        ext = [p.extent() for p in self.parts]
        return np.min([e[0] for e in ext], axis=0), np.max([e[1] for e in ext], axis=0)

    def _depth(self, pts: Coords, axes: Coords, margin: float) -> np.ndarray:
        out = np.full(pts[0].shape, np.inf, np.float32)
        for part in self.parts:
            _part_depth(part, out, pts, axes, margin, "min")
        return out

    def interior_point(self, rng: np.random.Generator) -> np.ndarray:
        return self.parts[0].interior_point(rng)


@dataclass(frozen=True)
class Difference(Shape):
    """``base`` minus ``cut`` (depth = max(base, 2 - cut))."""

    base: Shape
    cut: Shape

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        return self.base.extent()

    def _depth(self, pts: Coords, axes: Coords, margin: float) -> np.ndarray:
        out = self.base._depth(pts, axes, margin)
        _part_depth(self.cut, out, pts, axes, margin, "subtract")
        return out

    def interior_point(self, rng: np.random.Generator) -> np.ndarray:
        return self.base.interior_point(rng)
