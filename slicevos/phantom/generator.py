"""Synthetic abdominal CT phantoms with FLARE labels: the project's demo and test data.

``make_phantom(seed, config)`` draws a random anatomy in millimetres (body wall, spine, ribs,
lung bases, bowel, the 13 FLARE organs, unlabeled vessels, optional tumors) and samples it on
the configured grid, so one seed gives the same anatomy at any size and spacing. Output is on
the canonical grid of ``slicevos.io.volume``: ``hu`` float32 and ``labels`` uint8, both
``(D, H, W)``, axis 0 inferior -> superior, axis 1 anterior -> posterior, axis 2 patient right ->
left (the liver is at small column indices). ``geometry`` writes them as NIfTI in the usual
LPS file layout (file array ``(W, H, D)``), whose world z is the phantom's anatomical height.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import gaussian_filter1d

from slicevos.errors import InputError
from slicevos.io.labels import FLARE22, FLARE23, LabelSchema
from slicevos.io.volume import Geometry, Volume
from slicevos.phantom.anatomy import TISSUE_HU, Structure, Tissue
from slicevos.phantom.fields import Grid, SmoothField
from slicevos.phantom.organs import ORGAN_ID, Anatomy, sample_anatomy
from slicevos.phantom.render import render
from slicevos.phantom.shapes import Ellipsoid, rotation

TUMOR_ID = FLARE23.id_of("tumor")
DEFAULT_ORGAN_HU: dict[str, float] = {
    "liver": 60.0, "right_kidney": 150.0, "spleen": 50.0, "pancreas": 45.0, "aorta": 180.0,
    "inferior_vena_cava": 130.0, "right_adrenal_gland": 35.0, "left_adrenal_gland": 35.0,
    "gallbladder": 10.0, "esophagus": 40.0, "stomach": 40.0, "duodenum": 40.0,
    "left_kidney": 150.0,
}
MAX_SIZE, MAX_SLICES, MAX_TUMORS = 1024, 1000, 20


@dataclass(frozen=True)
class PhantomConfig:
    """How phantoms are drawn and sampled (lengths in mm, intensities in HU).

    ``shape`` is ``(D, H, W)``. With ``spacing`` None the grid covers ``z_range_mm`` (anatomical
    heights, inferior first; 0 is about the L1/L2 disc) in D slices and ``field_of_view_mm`` over
    the longer in-plane side; an explicit ``(dz, dy, dx)`` keeps the scan centred on the middle of
    ``z_range_mm``. Each seed shifts the scan by up to ``z_jitter_mm``. ``organs`` get labels; the
    others are still drawn, with label 0 (like a partially annotated scan). ``organ_hu`` overrides
    single entries of ``DEFAULT_ORGAN_HU``; each seed shifts every organ by up to ``hu_jitter``.
    Tumors (label 14) appear only with ``with_tumors``: with ``tumor_probability`` a case gets
    1..``max_tumors`` spheroids of ``tumor_radius_mm`` in one of ``tumor_organs``, each
    ``tumor_hu_offset`` HU from its organ. ``blur_voxels`` is the Gaussian sigma (voxels) of the
    partial-volume blur; ``noise_hu`` the noise standard deviation after it.
    """

    shape: tuple[int, int, int] = (48, 128, 128)
    spacing: tuple[float, float, float] | None = None
    field_of_view_mm: float = 400.0
    z_range_mm: tuple[float, float] = (-165.0, 215.0)
    z_jitter_mm: float = 15.0
    noise_hu: float = 15.0
    blur_voxels: float = 0.5
    texture_hu: float = 5.0
    hu_jitter: float = 8.0
    organ_hu: dict[str, float] = field(default_factory=dict)
    organs: tuple[str, ...] = FLARE22.names
    with_tumors: bool = False
    tumor_probability: float = 0.5
    tumor_organs: tuple[str, ...] = ("liver", "right_kidney", "left_kidney", "pancreas")
    max_tumors: int = 2
    tumor_radius_mm: tuple[float, float] = (5.0, 18.0)
    tumor_hu_offset: tuple[float, float] = (-50.0, -20.0)

    def __post_init__(self) -> None:
        d, h, w = self.shape
        if not (1 <= d <= MAX_SLICES and 16 <= h <= MAX_SIZE and 16 <= w <= MAX_SIZE):
            self._bad(f"shape {tuple(self.shape)} is outside 1..{MAX_SLICES} slices and "
                      f"16..{MAX_SIZE} pixels in-plane", "use e.g. (48, 128, 128)")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            self._bad(f"spacing {self.spacing} must be three positive mm values (dz, dy, dx)",
                      "e.g. (5.0, 1.5, 1.5), or leave it empty to fit the field of view")
        if self.field_of_view_mm <= 0 or self.z_range_mm[1] <= self.z_range_mm[0]:
            self._bad(f"field of view {self.field_of_view_mm} mm / z range {self.z_range_mm} is "
                      "empty", "use a positive field of view and z_range_mm (low, high)")
        names = set(FLARE22.names)
        for key, given in (("organs", self.organs), ("tumor_organs", self.tumor_organs),
                           ("organ_hu", tuple(self.organ_hu))):
            unknown = sorted(set(given) - names)
            if unknown:
                self._bad(f"{key} has unknown organ names {unknown}", f"use names from {sorted(names)}")
        amounts = {"noise_hu": self.noise_hu, "blur_voxels": self.blur_voxels,
                   "texture_hu": self.texture_hu, "hu_jitter": self.hu_jitter,
                   "z_jitter_mm": self.z_jitter_mm}
        negative = {k: v for k, v in amounts.items() if v < 0}
        if negative:
            self._bad(f"negative values {negative}", "use values >= 0")
        lo, hi = self.tumor_radius_mm
        if not (0 <= self.tumor_probability <= 1 and 1 <= self.max_tumors <= MAX_TUMORS
                and 0 < lo <= hi):
            self._bad(f"tumor_probability {self.tumor_probability}, max_tumors {self.max_tumors}"
                      f" or tumor_radius_mm {self.tumor_radius_mm} out of range",
                      f"use a probability in 0..1, 1..{MAX_TUMORS} tumors and radii 0 < low <= high")

    @staticmethod
    def _bad(problem: str, fix: str) -> None:
        raise InputError("PhantomConfig", problem, fix)

    def grid(self, z_shift: float = 0.0) -> Grid:
        """The voxel grid; ``z_shift`` in -1..1 moves it by that fraction of ``z_jitter_mm``."""
        lo, hi = self.z_range_mm
        d, h, w = self.shape
        if self.spacing is None:
            inplane = self.field_of_view_mm / max(h, w)
            spacing = ((hi - lo) / d, inplane, inplane)
        else:
            spacing = tuple(float(s) for s in self.spacing)
        return Grid(tuple(self.shape), spacing, (lo + hi) / 2 + z_shift * self.z_jitter_mm)

    @property
    def schema(self) -> LabelSchema:
        return FLARE23 if self.with_tumors else FLARE22


@dataclass(frozen=True)
class TumorInfo:
    organ: str
    center_mm: tuple[float, float, float]  # (z, y, x) in the phantom frame
    radius_mm: float
    hu: float


@dataclass
class Phantom:
    """One synthetic CT: ``hu`` float32 and ``labels`` uint8 on the canonical ``(D, H, W)`` grid."""

    hu: np.ndarray
    labels: np.ndarray
    geometry: Geometry
    seed: int
    schema: LabelSchema
    organ_hu: dict[str, float]  # the organ intensities this case was drawn with
    tumors: tuple[TumorInfo, ...] = ()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(dz, dy, dx) in mm."""
        return self.geometry.spacing

    def to_volume(self) -> Volume:
        return Volume(hu=self.hu, geometry=self.geometry)


def grid_geometry(grid: Grid) -> Geometry:
    """NIfTI geometry of a phantom grid: file array ``(W, H, D)``, axis codes L, P, S."""
    dz, dy, dx = grid.spacing
    z0, y0, x0 = (float(a[0]) for a in grid.axes)
    affine = np.array([[-dx, 0, 0, -x0], [0, -dy, 0, -y0], [0, 0, dz, z0], [0, 0, 0, 1]],
                      dtype=np.float64)
    d, h, w = grid.shape
    return Geometry(affine, (w, h, d))


def _organ_hu(config: PhantomConfig, anatomy: Anatomy) -> dict[str, float]:
    base = {**DEFAULT_ORGAN_HU, **config.organ_hu}
    return {n: base[n] + config.hu_jitter * anatomy.hu_jitter[ORGAN_ID[n]] for n in FLARE22.names}


def _tumors(rng: np.random.Generator, config: PhantomConfig, anatomy: Anatomy, grid: Grid,
            organ_hu: dict[str, float]) -> list[tuple[Structure, TumorInfo]]:
    """Tumor structures drawn from their own generator (the anatomy does not change)."""
    if not config.with_tumors or rng.random() >= config.tumor_probability:
        return []
    shapes = {s.name: s.shape for s in anatomy.structures}
    z_lo, z_hi = float(grid.axes[0][0]), float(grid.axes[0][-1])
    out = []
    for i in range(int(rng.integers(1, config.max_tumors + 1))):
        for _ in range(20):  # a centre inside the scanned part of a host organ
            organ = str(rng.choice(config.tumor_organs))
            center = shapes[organ].interior_point(rng)
            if z_lo <= center[0] <= z_hi:
                break
        radius = float(rng.uniform(*config.tumor_radius_mm))
        semi = radius * rng.uniform(0.8, 1.2, 3)
        shape = Ellipsoid(center, semi, rotation(tuple(rng.uniform(-90, 90, 3))))
        lo, hi = shape.extent()
        warp = SmoothField.random(rng, lo, hi, max(radius, 4.0), radius * 0.12, channels=3)
        shape = replace(shape, warp=warp, warp_mm=radius * 0.3)
        hu = organ_hu[organ] + float(rng.uniform(*config.tumor_hu_offset))
        s = Structure("tumor", shape, Tissue.TUMOR_FIRST + i, TUMOR_ID, within_label=ORGAN_ID[organ])
        out.append((s, TumorInfo(organ, tuple(float(c) for c in center), radius, hu)))
    return out


def tissue_lut(organ_hu: dict[str, float], tumor_hu: list[float]) -> np.ndarray:
    """HU of every tissue code (float32, 256 entries)."""
    lut = np.zeros(256, np.float32)
    for tissue, hu in TISSUE_HU.items():
        lut[tissue] = hu
    for name, hu in organ_hu.items():
        lut[ORGAN_ID[name]] = hu
    lut[Tissue.ARTERY] = organ_hu["aorta"]
    lut[Tissue.VEIN] = organ_hu["inferior_vena_cava"]
    lut[Tissue.KIDNEY_MEDULLA] = (organ_hu["right_kidney"] + organ_hu["left_kidney"]) / 2 - 20
    for i, hu in enumerate(tumor_hu):
        lut[Tissue.TUMOR_FIRST + i] = hu
    return lut


def _gaussian_taps(sigma: float) -> np.ndarray:
    taps = np.arange(-int(3 * sigma + 0.5), int(3 * sigma + 0.5) + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _blur_and_noise(hu: np.ndarray, config: PhantomConfig, rng: np.random.Generator) -> None:
    """Add white noise, then blur with sigma ``blur_voxels`` along every axis (in place, slice
    by slice); the noise is pre-scaled so that its standard deviation ends at ``noise_hu``."""
    sigma = config.blur_voxels if config.blur_voxels >= 0.05 else 0.0
    kernel = _gaussian_taps(sigma) if sigma else np.ones(1, np.float32)
    blurred_axes = sum(n > 1 for n in hu.shape)
    scale = np.float32(config.noise_hu / np.sqrt(float((kernel**2).sum()) ** blurred_axes))
    half, d = len(kernel) // 2, hu.shape[0]

    def noisy_inplane_blurred(i: int) -> np.ndarray:
        sl = hu[i]
        if scale > 0:
            sl += rng.standard_normal(sl.shape, dtype=np.float32) * scale
        for axis in (0, 1):
            if sigma and sl.shape[axis] > 1:
                gaussian_filter1d(sl, sigma, axis=axis, output=sl, truncate=3.0, mode="nearest")
        return sl.copy()

    ready: dict[int, np.ndarray] = {}  # slices k - half .. k + half before the z blur
    for k in range(d):
        for i in range(max(k - half, 0), min(k + half, d - 1) + 1):
            if i not in ready:
                ready[i] = noisy_inplane_blurred(i)
        hu[k] = 0
        for j, w in enumerate(kernel):
            hu[k] += w * ready[min(max(k - half + j, 0), d - 1)]
        ready.pop(k - half, None)


def make_phantom(seed: int, config: PhantomConfig | None = None) -> Phantom:
    """Draw the phantom of ``seed`` on the grid of ``config`` (see the module docstring)."""
    config = config or PhantomConfig()
    anatomy_seq, tumor_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(3)
    anatomy = sample_anatomy(np.random.default_rng(anatomy_seq))
    grid = config.grid(anatomy.z_shift)
    organ_hu = _organ_hu(config, anatomy)
    tumors = _tumors(np.random.default_rng(tumor_seq), config, anatomy, grid, organ_hu)
    hu = np.empty(grid.shape, np.float32)
    tissue, labels = render(anatomy, grid, [s for s, _ in tumors], texture=hu)
    unlabeled = [ORGAN_ID[n] for n in FLARE22.names if n not in config.organs]
    if unlabeled:
        labels[np.isin(labels, unlabeled)] = 0
    lut = tissue_lut(organ_hu, [t.hu for _, t in tumors])
    for k in range(grid.shape[0]):
        hu[k] *= np.float32(config.texture_hu)
        hu[k] += lut[tissue[k]]
    _blur_and_noise(hu, config, np.random.default_rng(noise_seq))
    np.clip(hu, -1024, 3071, out=hu)
    return Phantom(hu=hu, labels=labels, geometry=grid_geometry(grid), seed=int(seed),
                   schema=config.schema, organ_hu=organ_hu, tumors=tuple(t for _, t in tumors))
