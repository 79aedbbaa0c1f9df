"""The phantom's body frame: tissues, outline and wall layers, spine, ribs, diaphragm, pelvis.

All parameters are drawn from the anatomy random generator in a fixed order and are in mm in
the patient frame of ``phantom_fields`` (z up, y to the back, x to the patient's left).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from slicevos.phantom.shapes import Shape


class Tissue(IntEnum):
    """Tissue codes of the phantom's tissue map; 1..13 are the FLARE organs (same ids)."""

    AIR = 0
    FAT = 20
    VISCERAL_FAT = 21
    SKIN = 22
    MUSCLE = 23
    BOWEL = 24
    GAS = 25
    FLUID = 26
    LUNG = 27
    HEART = 28
    BONE_CORTEX = 29
    BONE_MARROW = 30
    DISC = 31
    CSF = 32
    CARTILAGE = 33
    ARTERY = 34
    VEIN = 35
    PORTAL_VEIN = 36
    KIDNEY_MEDULLA = 37
    STOOL = 38
    RIB = 39
    TUMOR_FIRST = 40  # tumor i has code TUMOR_FIRST + i


# HU of the tissues that are not configurable organs (vessels and kidney medulla follow the
# organ values, see ``phantom.tissue_lut``).
TISSUE_HU: dict[Tissue, float] = {
    Tissue.AIR: -1000.0, Tissue.FAT: -100.0, Tissue.VISCERAL_FAT: -90.0, Tissue.SKIN: 20.0,
    Tissue.MUSCLE: 50.0, Tissue.BOWEL: 35.0, Tissue.GAS: -900.0, Tissue.FLUID: 12.0,
    Tissue.LUNG: -850.0, Tissue.HEART: 120.0, Tissue.BONE_CORTEX: 900.0,
    Tissue.BONE_MARROW: 450.0, Tissue.DISC: 90.0, Tissue.CSF: 15.0, Tissue.CARTILAGE: 150.0,
    Tissue.PORTAL_VEIN: 150.0, Tissue.STOOL: -60.0, Tissue.RIB: 650.0,
}
# Tissues an organ may be drawn over (the walls, muscles and bones keep their place).
SOFT_BACKGROUND = (Tissue.VISCERAL_FAT, Tissue.BOWEL, Tissue.GAS, Tissue.FLUID, Tissue.STOOL)


@dataclass(frozen=True)
class Structure:
    """One thing to draw: a shape, its tissue and what it does to the label map.

    ``label``: id written where it is drawn (None leaves labels alone, 0 clears them).
    ``core``: (tissue, depth) for the inside (e.g. stomach content below depth 0.8).
    ``gas_front_of_y``: core voxels anterior of this y (mm) become gas (a gas-fluid level).
    ``within_label``: draw only where the label map already holds this id (tumors, veins).
    ``layer`` says what it may be drawn over: "organ" (default) the soft background and earlier
    organs and vessels, never the body wall or muscles; "vessel" muscles too; "soft" only the
    soft background.
    """

    name: str
    shape: Shape
    tissue: int
    label: int | None = None
    core: tuple[int, float] | None = None
    gas_front_of_y: float | None = None
    layer: str = "organ"
    below_diaphragm: bool = False
    above_diaphragm: bool = False
    within_label: int | None = None


@dataclass(frozen=True)
class Body:
    """Body outline (a deformed superellipse scaled along z) and its wall layers."""

    half_width: float
    half_depth: float
    squareness: float
    harmonics: np.ndarray  # (K, 2): cos/sin coefficients of the angular orders 2..K+1
    z_waves: np.ndarray  # (M, 3): relative amplitude, wavelength mm, phase
    fat_mm: float
    fat_front_gain: float
    muscle_mm: float

    def outline(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per pixel: distance from the slice centre, outline radius at its angle, subcutaneous
        fat and wall muscle thickness (all mm, the outline at z scale 1)."""
        rho = np.hypot(x, y)
        theta = np.arctan2(y, x)
        c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
        n = self.squareness
        radius = ((c / self.half_width) ** n + (s / self.half_depth) ** n) ** (-1.0 / n)
        for k, (a, b) in enumerate(self.harmonics, start=2):
            radius = radius * (1 + a * np.cos(k * theta) + b * np.sin(k * theta))
        front = -np.sin(theta)  # 1 anterior, -1 posterior
        fat = self.fat_mm * (1 + self.fat_front_gain * front)
        muscle = self.muscle_mm * (1 - 0.2 * front)
        return tuple(a.astype(np.float32) for a in (rho, radius, fat, muscle))

    def z_scale(self, z: np.ndarray) -> np.ndarray:
        amp, wavelength, phase = self.z_waves.T
        return (1 + (amp * np.cos(2 * np.pi * z[:, None] / wavelength + phase)).sum(1)).astype(
            np.float32)


@dataclass(frozen=True)
class Spine:
    """Vertebrae repeating every ``level_mm`` along z, discs centred at ``disc_z0 + k * level``."""

    y0: float
    lordosis: float
    body_semi: tuple[float, float]  # (y, x) semi-axes of a vertebral body
    level_mm: float
    disc_mm: float
    disc_z0: float
    canal_r: float

    def body_y(self, z: np.ndarray | float) -> np.ndarray:
        """y of the vertebral body centre; lumbar bodies sit further forward (lordosis)."""
        return self.y0 - self.lordosis * np.exp(-(((np.asarray(z) + 80.0) / 120.0) ** 2))

    def phase(self, z: float) -> float:
        """Position within a level: 0 at a disc centre, 0.5 mid vertebral body."""
        return float(((z - self.disc_z0) / self.level_mm) % 1.0)

    def front_y(self, z: np.ndarray | float) -> np.ndarray:
        return self.body_y(z) - self.body_semi[0]


@dataclass(frozen=True)
class Ribs:
    lowest_head_z: float  # where the 12th rib leaves the spine
    level_mm: float
    drop_mm: float  # how far a rib descends from its head to its front end
    reach: tuple[float, ...]  # front end of each rib (angle from the back / pi), 12th first
    cartilage_from: float  # angle / pi beyond which a rib is cartilage
    cage_semi: tuple[float, float]  # (y, x) semi-axes of the rib cage at z scale 1
    thickness_mm: float = 8.0
    height_mm: float = 11.0


@dataclass(frozen=True)
class Diaphragm:
    """Two domes (right higher) over a lower rim; ``height`` gives its z at each (y, x)."""

    peaks: np.ndarray  # (2, 3): (z, y, x) of the right and the left dome top
    rim_z: float
    width_x: float
    width_front: float
    width_back: float
    thickness_mm: float

    def height(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        top = None
        for pz, py, px in self.peaks:
            wy = np.where(y < py, self.width_front, self.width_back)
            g = np.exp(-0.5 * (((x - px) / self.width_x) ** 2 + ((y - py) / wy) ** 2))
            h = self.rim_z + (pz - self.rim_z) * g
            top = h if top is None else np.maximum(top, h)
        return top.astype(np.float32)


@dataclass(frozen=True)
class Pelvis:
    crest_z: float  # top of the iliac wings
    wing_center: tuple[float, float]  # (y, |x|) of the circle the wing follows
    wing_radius: float
    wing_mm: float
    sternum_z: float  # lower end of the sternum (xiphoid)


def sample_body(rng: np.random.Generator) -> Body:
    u = rng.uniform
    return Body(
        half_width=u(145, 180), half_depth=u(100, 125), squareness=u(2.0, 2.6),
        harmonics=rng.normal(0, 0.012, (4, 2)),
        z_waves=np.stack([u(0.01, 0.03, 3), u(250, 700, 3), u(0, 2 * np.pi, 3)], axis=1),
        fat_mm=u(8, 30), fat_front_gain=u(0.1, 0.5), muscle_mm=u(10, 15),
    )


def sample_frame(rng: np.random.Generator, body: Body, fz: float) -> tuple[
        Spine, Ribs, Diaphragm, Pelvis]:
    """Spine, ribs, diaphragm and pelvis for a body (``fz``: torso length factor)."""
    u = rng.uniform
    level = u(29, 34) * fz
    spine = Spine(y0=0.3 * body.half_depth + u(-3, 3), lordosis=u(0, 10),
                  body_semi=(u(15, 18), u(19, 24)), level_mm=level, disc_mm=u(6, 9),
                  disc_z0=u(0, level), canal_r=u(8, 10))
    inner = body.fat_mm + body.muscle_mm
    ribs = Ribs(lowest_head_z=u(30, 55) * fz, level_mm=level, drop_mm=u(45, 80),
                reach=(0.4, 0.52, 0.75, 0.82, 0.88, 0.9, 0.92, 0.92, 0.92, 0.92, 0.92, 0.92),
                cartilage_from=u(0.68, 0.75),
                cage_semi=(body.half_depth - inner * 0.8, body.half_width - inner * 0.9))
    right_top = u(140, 170) * fz
    peaks = np.array([[right_top, u(-15, 5), -u(55, 75)],
                      [right_top - u(5, 25), u(-10, 10), u(60, 80)]])
    diaphragm = Diaphragm(peaks=peaks, rim_z=right_top - u(90, 115) * fz, width_x=u(55, 70),
                          width_front=u(90, 110), width_back=u(50, 60), thickness_mm=u(3, 5))
    pelvis = Pelvis(crest_z=u(-165, -135) * fz, wing_center=(u(5, 20), u(35, 50)),
                    wing_radius=u(65, 80), wing_mm=u(8, 12), sternum_z=right_top - u(0, 25))
    return spine, ribs, diaphragm, pelvis
