"""The phantom's organs and vessels: random shapes around roughly anatomical positions.

``sample_anatomy(rng)`` draws one complete anatomy (body frame, organs, vessels, bowel fields)
in mm. Positions below are written as (x, y, z) in mm for an average body (half width 165 mm,
half depth 115 mm): x to the patient's left, y to the back, z up (0 about the L1/L2 disc); they
are scaled to the drawn body and jittered. The draws happen in a fixed order whatever the
configuration, so a seed gives the same anatomy at every grid size and spacing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from slicevos.io.labels import FLARE22
from slicevos.phantom.anatomy import (
    Body,
    Diaphragm,
    Pelvis,
    Ribs,
    Spine,
    Structure,
    Tissue,
    sample_body,
    sample_frame,
)
from slicevos.phantom.fields import SmoothField
from slicevos.phantom.shapes import Difference, Ellipsoid, Shape, Tube, Union, rotation

ORGAN_ID = {name: FLARE22.id_of(name) for name in FLARE22.names}
# Drawing order: where two structures overlap, the later one wins.
DRAW_ORDER = (
    "colon", "liver", "hepatic_veins", "stomach", "spleen", "right_kidney", "left_kidney",
    "portal_vein", "splenic_vein", "renal_veins", "duodenum", "gallbladder", "pancreas",
    "right_adrenal_gland", "left_adrenal_gland", "esophagus", "inferior_vena_cava", "aorta",
    "iliac_vein", "iliac_artery", "heart",
)


@dataclass(frozen=True)
class Anatomy:
    body: Body
    spine: Spine
    ribs: Ribs
    diaphragm: Diaphragm
    pelvis: Pelvis
    structures: tuple[Structure, ...]  # in drawing order; later ones win
    fields: SmoothField  # channels: bowel, bowel gas, soft-tissue texture (std 1 each)
    hu_jitter: dict[int, float]  # organ id -> U(-1, 1), scaled by the config's hu_jitter
    z_shift: float  # U(-1, 1), scaled by the config's z_jitter_mm
    psoas_top_z: float
    bowel_top_z: float


class _Placer:
    """Scales the reference positions to the drawn body and adds jitter and warps."""

    def __init__(self, rng: np.random.Generator, body: Body, spine: Spine, fz: float) -> None:
        self.rng, self.spine, self.fz = rng, spine, fz
        self.fx, self.fy = body.half_width / 165.0, body.half_depth / 115.0

    def at(self, x: float, y: float, z: float, sd: float = 4.0) -> np.ndarray:
        return np.array([z * self.fz, y * self.fy, x * self.fx]) + self.rng.normal(0, sd, 3)

    def before_spine(self, x: float, dy: float, z: float, sd: float = 2.0) -> np.ndarray:
        """A point ``dy`` mm in front of (dy < 0) the vertebral bodies at height z."""
        z = z * self.fz
        return np.array([z, float(self.spine.front_y(z)) + dy, x * self.fx]) + self.rng.normal(0, sd, 3)

    def size(self) -> float:
        return float(self.rng.uniform(0.85, 1.15))

    def warped(self, shape: Shape, amplitude: float, step: float = 35.0) -> Shape:
        lo, hi = shape.extent()
        field = SmoothField.random(self.rng, lo, hi, step, amplitude, channels=3)
        return dataclasses.replace(shape, warp=field, warp_mm=2.5 * amplitude)

    def tube(self, points: list[np.ndarray], radii: list[float], amplitude: float = 4.0,
             squash: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Shape:
        scale = self.size()
        r = np.array(radii) * scale * self.rng.uniform(0.92, 1.08, len(radii))
        return self.warped(Tube(np.array(points), r, squash), amplitude)

    def ellipsoid(self, center: np.ndarray, semi_zyx: tuple[float, float, float],
                  angles: tuple[float, float, float], spread: float = 8.0) -> Ellipsoid:
        semi = np.array(semi_zyx) * self.size()
        rot = rotation(tuple(np.array(angles) + self.rng.normal(0, spread, 3)))
        return Ellipsoid(center, semi, rot)


def _abdominal_organs(p: _Placer, gas_y: float) -> list[Structure]:
    """Liver, spleen, stomach, kidneys and gallbladder."""
    lobes = Union((p.ellipsoid(p.at(-68, -4, 78), (105, 90, 78), (0, 0, 0)),
                   p.ellipsoid(p.at(12, -55, 100), (48, 38, 68), (0, 0, 0))))
    # the liver stays out of the left upper quadrant behind the stomach (spleen, left kidney)
    liver = Difference(lobes, Ellipsoid(p.at(70, 55, 80, 0.0), np.array([250.0, 60, 65])))
    spleen_body = p.ellipsoid(p.at(98, 42, 95), (56, 54, 27), (-37, 0, 0))
    spleen_cut = Ellipsoid(spleen_body.center + np.array([0, -15 * p.fy, -40 * p.fx]),
                           np.array([40.0, 30.0, 25.0]))
    stomach = p.tube([p.at(30, 8, 112), p.at(52, 18, 125), p.at(72, -8, 95), p.at(62, -42, 58),
                      p.at(28, -62, 28), p.at(-10, -55, 18)], [12, 30, 36, 34, 25, 13], 5.0)
    out = [
        Structure("liver", p.warped(liver, 7.0, 40.0), ORGAN_ID["liver"], ORGAN_ID["liver"],
                  below_diaphragm=True),
        Structure("spleen", p.warped(Difference(spleen_body, spleen_cut), 5.0), ORGAN_ID["spleen"],
                  ORGAN_ID["spleen"], below_diaphragm=True),
        Structure("stomach", stomach, ORGAN_ID["stomach"], ORGAN_ID["stomach"],
                  core=(Tissue.FLUID, 0.82), gas_front_of_y=gas_y, below_diaphragm=True),
    ]
    for name, side in (("right_kidney", -1), ("left_kidney", 1)):
        center = p.at(70 * side, 48, -15 if side < 0 else 5)
        kidney = p.ellipsoid(center, (52, 24, 28), (25 * side, 12 * side, 0), spread=5.0)
        hilum = Ellipsoid(center + np.array([0, -12, -26 * side]), np.array([14.0, 12, 12]))
        out.append(Structure(name, p.warped(Difference(kidney, hilum), 3.0, 30.0),
                             ORGAN_ID[name], ORGAN_ID[name], core=(Tissue.KIDNEY_MEDULLA, 0.6),
                             below_diaphragm=True))
    gallbladder = p.ellipsoid(p.at(-48, -55, 15), (38, 17, 18), (0, 0, 30))
    out.append(Structure("gallbladder", p.warped(gallbladder, 3.0, 25.0),
                         ORGAN_ID["gallbladder"], ORGAN_ID["gallbladder"]))
    return out


def _veins(p: _Placer) -> list[Structure]:
    """Unlabeled veins (the hepatic veins keep the liver label)."""
    hv = p.at(-22, -5, 140, sd=2.0)
    hepatic = Union(tuple(Tube(np.array([hv, p.at(*end)]), np.array([5.0, 3.5]))
                          for end in ((-105, 0, 105), (-55, -55, 110), (5, -55, 115))))
    confluence = p.at(-8, -24, -8, sd=2.0)
    portal = Tube(np.array([confluence, p.at(-30, -15, 30), p.at(-55, -5, 55)]),
                  np.array([7.0, 7.0, 5.5]))
    splenic = Tube(np.array([confluence, p.at(35, -12, 10), p.at(75, 15, 35)]),
                   np.array([4.5, 4.5, 4.0]))
    renal = Union((Tube(np.array([p.at(50, 32, 2), p.before_spine(12, -30, 0), p.before_spine(
        -22, -10, -3)]), np.array([5.0, 4.5, 5.5])),
        Tube(np.array([p.at(-50, 35, -8), p.before_spine(-22, -10, -5)]), np.array([5.0, 5.5]))))
    return [
        Structure("hepatic_veins", p.warped(hepatic, 3.0), Tissue.VEIN,
                  within_label=ORGAN_ID["liver"]),
        Structure("portal_vein", p.warped(portal, 3.0), Tissue.PORTAL_VEIN, 0),
        Structure("splenic_vein", p.warped(splenic, 3.0), Tissue.VEIN, 0),
        Structure("renal_veins", p.warped(renal, 2.0), Tissue.VEIN, 0, layer="vessel"),
    ]


def _retroperitoneal(p: _Placer, z_bif: float) -> list[Structure]:
    """Duodenum, pancreas, adrenals, esophagus, IVC, aorta and the iliac vessels."""
    out = [
        Structure("duodenum", p.tube(
            [p.at(-10, -55, 18), p.at(-38, -35, 14), p.at(-55, -12, 0), p.at(-58, -8, -30),
             p.at(-50, -10, -55), p.at(-20, -28, -65), p.at(12, -30, -65), p.at(30, -22, -48),
             p.at(35, -25, -25)], [13, 13, 13, 12, 12, 12, 12, 11, 11]),
            ORGAN_ID["duodenum"], ORGAN_ID["duodenum"], core=(Tissue.FLUID, 0.6)),
        Structure("pancreas", p.tube(
            [p.at(-33, -8, -35), p.at(-35, -15, -15), p.at(-8, -32, -3), p.at(25, -25, 8),
             p.at(55, -5, 18), p.at(80, 18, 28)], [13, 16, 12, 12, 11, 9], squash=(1, 0.7, 1)),
            ORGAN_ID["pancreas"], ORGAN_ID["pancreas"]),
    ]
    for name, side in (("right_adrenal_gland", -1), ("left_adrenal_gland", 1)):
        limbs = [p.at(46 * side, 44, 34, 3), p.at(37 * side, 25, 60, 3), p.at(32 * side, 42, 34, 3)]
        out.append(Structure(name, p.tube(limbs, [4.5, 5.0, 4.5], 2.0), ORGAN_ID[name],
                             ORGAN_ID[name]))
    out.append(Structure("esophagus", p.tube(
        [p.at(30, 8, 112, 2), p.before_spine(16, -9, 150), p.before_spine(6, -9, 200),
         p.before_spine(3, -9, 300), p.before_spine(3, -9, 520)], [9, 8, 8, 8, 8], 2.0,
        squash=(1, 0.75, 1)), ORGAN_ID["esophagus"], ORGAN_ID["esophagus"],
        core=(Tissue.GAS, 0.3)))
    out.append(Structure("inferior_vena_cava", p.tube(
        [p.before_spine(-20, -10, -125), p.before_spine(-22, -10, -40), p.before_spine(-24, -12, 20),
         p.at(-28, -2, 80, 2), p.at(-26, -8, 130, 2), p.at(-20, -15, 168, 2)],
        [10, 11, 12, 12, 13, 13], 2.0, squash=(1, 0.75, 1)),
        ORGAN_ID["inferior_vena_cava"], ORGAN_ID["inferior_vena_cava"], layer="vessel"))
    zb = z_bif / p.fz
    aorta = p.tube([p.before_spine(13, -13, zb), p.before_spine(12, -15, -50),
                    p.before_spine(10, -16, 20), p.before_spine(14, -15, 90),
                    p.before_spine(24, -4, 140), p.before_spine(30, 4, 200),
                    p.before_spine(30, 4, 520)], [9.5, 11, 12, 12.5, 13, 13, 13], 2.0)
    out.append(Structure("aorta", aorta, ORGAN_ID["aorta"], ORGAN_ID["aorta"], layer="vessel"))
    bif, ivc0 = aorta.points[0], out[-2].shape.points[0]
    for side in (-1, 1):
        artery = Tube(np.array([bif, p.before_spine(42 * side, -12, -200), p.at(68 * side, 25, -270)]),
                      np.array([6.5, 6.0, 5.5]))
        vein = Tube(np.array([ivc0, p.before_spine(45 * side, -2, -205), p.at(72 * side, 35, -270)]),
                    np.array([7.5, 7.0, 6.5]))
        out += [Structure("iliac_vein", vein, Tissue.VEIN, 0, layer="vessel"),
                Structure("iliac_artery", artery, Tissue.ARTERY, 0, layer="vessel")]
    return out


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one anatomy; see the module docstring."""
    body = sample_body(rng)
    fz = float(rng.uniform(0.92, 1.08))
    spine, ribs, diaphragm, pelvis = sample_frame(rng, body, fz)
    p = _Placer(rng, body, spine, fz)
    gas_y = float(rng.uniform(-60, -10))
    colon = p.tube([p.at(*q) for q in ((-95, 0, -175), (-100, -5, -60), (-92, -25, 5),
                                       (-60, -72, 8), (0, -85, -15), (60, -68, 25), (98, -15, 60),
                                       (108, 15, -40), (98, 12, -175))], [22] * 9, 6.0)
    heart_z = float(diaphragm.peaks[:, 0].mean()) + 50
    heart = p.ellipsoid(np.array([heart_z, -45 * p.fy, 20 * p.fx]), (60, 55, 70), (0, 0, 0))
    z_bif = float(rng.uniform(-130, -100)) * fz
    structures = [
        Structure("colon", colon, Tissue.BOWEL, core=(Tissue.STOOL, 0.8), gas_front_of_y=gas_y),
        *_abdominal_organs(p, gas_y), *_veins(p), *_retroperitoneal(p, z_bif),
        Structure("heart", heart, Tissue.HEART, above_diaphragm=True, layer="soft"),
    ]
    structures.sort(key=lambda s: DRAW_ORDER.index(s.name))
    fields = SmoothField.random(rng, np.array([-600.0, -260, -260]), np.array([600.0, 260, 260]),
                                step=16.0, amplitude=1.0, channels=3)
    return Anatomy(
        body=body, spine=spine, ribs=ribs, diaphragm=diaphragm, pelvis=pelvis,
        structures=tuple(structures), fields=fields,
        hu_jitter={i: float(rng.uniform(-1, 1)) for i in FLARE22.ids},
        z_shift=float(rng.uniform(-1, 1)), psoas_top_z=float(rng.uniform(10, 35)) * fz,
        bowel_top_z=float(rng.uniform(10, 40)) * fz,
    )
