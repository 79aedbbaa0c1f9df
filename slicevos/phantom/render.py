"""Draw an anatomy on a voxel grid: a tissue map and a label map, both uint8 ``(D, H, W)``.

Order: body wall, muscles and bowel slice by slice; then the 3D structures (organs, vessels,
tumors) each on its own bounding box; then lungs, diaphragm and bones slice by slice (bones
clear the labels under them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slicevos.phantom.anatomy import SOFT_BACKGROUND, Structure, Tissue
from slicevos.phantom.fields import Grid
from slicevos.phantom.organs import Anatomy

SOFT = np.zeros(256, bool)
SOFT[list(SOFT_BACKGROUND)] = True
_OUTSIDE = [Tissue.AIR, Tissue.FAT, Tissue.SKIN]
# structure layer -> tissues it may be drawn over (see Structure)
DRAWABLE_OVER = {"soft": SOFT, "organ": np.ones(256, bool), "vessel": np.ones(256, bool)}
DRAWABLE_OVER["organ"][[*_OUTSIDE, Tissue.MUSCLE]] = False
DRAWABLE_OVER["vessel"][_OUTSIDE] = False
_RIB_START = 0.22  # ribs leave the spine this far round the back (angle / pi)


@dataclass(frozen=True)
class _Plane:
    """Per-pixel quantities of one slice that do not change along z."""

    y: np.ndarray
    x: np.ndarray
    rho: np.ndarray
    radius: np.ndarray
    fat: np.ndarray
    muscle: np.ndarray
    dome: np.ndarray
    cage: np.ndarray
    rib_drop: np.ndarray  # how far below its head a rib runs at this pixel's angle (mm)
    angle: np.ndarray  # angle from the back, / pi (0 back, 1 front)


def _plane(grid: Grid, anatomy: Anatomy) -> _Plane:
    y, x = (a.astype(np.float32) for a in grid.plane)
    rho, radius, fat, muscle = anatomy.body.outline(y, x)
    ribs = anatomy.ribs
    theta = np.arctan2(y, x)
    cy, cx = ribs.cage_semi
    cage = 1.0 / np.sqrt((np.cos(theta) / cx) ** 2 + (np.sin(theta) / cy) ** 2)
    angle = np.arctan2(np.abs(x), y) / np.pi
    drop = ribs.drop_mm * np.clip((angle - _RIB_START) / (1 - _RIB_START), 0, 1) ** 1.2
    return _Plane(y, x, rho, radius, fat, muscle, anatomy.diaphragm.height(y, x),
                  cage.astype(np.float32), drop.astype(np.float32), angle.astype(np.float32))


def _window(pl: _Plane, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice]:
    """Index slices of the pixels with y in [y0, y1] and x in [x0, x1] (mm)."""
    return (slice(*np.searchsorted(pl.y[:, 0], (y0, y1)).tolist()),
            slice(*np.searchsorted(pl.x[0], (x0, x1)).tolist()))


def _ellipse(pl: _Plane, cy: float, cx: float, sy: float, sx: float) -> tuple[
        tuple[slice, slice], np.ndarray]:
    """An ellipse as (window, mask inside the window)."""
    win = _window(pl, cy - sy, cy + sy, cx - sx, cx + sx)
    return win, ((pl.y[win] - cy) / sy) ** 2 + ((pl.x[win] - cx) / sx) ** 2 < 1


def _draw_walls(t: np.ndarray, z: float, scale: float, pl: _Plane, anatomy: Anatomy,
                fields: np.ndarray) -> None:
    """Skin, fat, wall muscle, back and psoas muscles and bowel on one slice ``t`` (H, W)."""
    depth = scale * pl.radius - pl.rho  # mm below the skin
    inside = depth >= 0
    t[inside] = Tissue.SKIN
    t[depth >= 2] = Tissue.FAT
    t[depth >= pl.fat] = Tissue.MUSCLE
    cavity = depth >= pl.fat + pl.muscle
    t[cavity] = Tissue.VISCERAL_FAT
    spine = anatomy.spine
    # bowel loops: a band of the random field is wall, its inside lumen with fluid or gas
    threshold = -0.35 + 1.8 / (1 + np.exp(-(z - anatomy.bowel_top_z) / 25.0))
    threshold = threshold + 0.05 * np.maximum(pl.y - float(spine.front_y(z)) + 15, 0)  # fewer at the back
    bowel = cavity & (fields[0] > threshold)
    t[bowel] = Tissue.BOWEL
    lumen = bowel & (fields[0] > threshold + 0.45)
    t[lumen] = Tissue.FLUID
    t[lumen & (fields[1] > 1.0)] = Tissue.GAS
    yc = float(spine.body_y(z))
    ay, ax = spine.body_semi
    grow = (anatomy.psoas_top_z - z) / 160.0
    r = 6 + 18 * min(grow, 1.0) ** 0.6 if grow > 0 else 0.0
    if z < anatomy.diaphragm.peaks[:, 0].max() - 20:  # crura and muscles around the spine
        win, mask = _ellipse(pl, yc + 8, 0.0, ay + 12, ax + 9)
        t[win][mask & (depth[win] >= pl.fat[win])] = Tissue.MUSCLE
    for side in (-1, 1):
        muscles = [(yc + ay + 30, side * (ax + 14), 20, 24)]
        if r:
            muscles.append((yc - 2, side * (ax + 2 + r * 0.6 + 12 * grow), 0.85 * r, r))
        for cy, cx, sy, sx in muscles:
            win, mask = _ellipse(pl, cy, cx, sy, sx)
            t[win][mask & (depth[win] >= pl.fat[win])] = Tissue.MUSCLE


def draw_structure(s: Structure, grid: Grid, tissue: np.ndarray, labels: np.ndarray,
                   dome: np.ndarray) -> None:
    """Draw one 3D structure on its bounding box (in place)."""
    box = grid.box(*s.shape.bounds())
    if box is None:
        return
    z, y, x = grid.coords(box)
    depth = s.shape.depth(z, y, x)
    tb, lb = tissue[box], labels[box]
    inside = (depth < 1) & DRAWABLE_OVER[s.layer][tb]
    if s.below_diaphragm or s.above_diaphragm:
        below = z[:, None, None] < dome[box[1:]][None]
        inside &= below if s.below_diaphragm else ~below
    if s.within_label is not None:
        inside &= lb == s.within_label
    tb[inside] = s.tissue
    if s.label is not None:
        lb[inside] = s.label
    if s.core is not None:
        core = inside & (depth < s.core[1])
        tb[core] = s.core[0]
        if s.gas_front_of_y is not None:
            tb[core & (y[None, :, None] < s.gas_front_of_y)] = Tissue.GAS


def _draw_spine(t: np.ndarray, pl: _Plane, z: float, anatomy: Anatomy) -> np.ndarray:
    """Vertebra at height z; returns the bone mask."""
    sp = anatomy.spine
    yc, (ay, ax) = float(sp.body_y(z)), sp.body_semi
    yk = yc + ay + sp.canal_r + 1
    win = _window(pl, yc - ay - 1, yk + 2 * sp.canal_r + 34, -ax - 30, ax + 30)
    full, t = np.zeros(t.shape, bool), t[win]
    y, x = pl.y[win], pl.x[win]
    phase = sp.phase(z)
    half_disc = sp.disc_mm / 2 / sp.level_mm
    e = np.sqrt((x / ax) ** 2 + ((y - yc) / ay) ** 2)
    vb = e < 1
    if phase < half_disc or phase > 1 - half_disc:
        t[vb] = Tissue.DISC
    else:
        plate = 2.0 / sp.level_mm
        endplate = phase < half_disc + plate or phase > 1 - half_disc - plate
        t[vb] = Tissue.BONE_CORTEX if endplate else Tissue.BONE_MARROW
        t[vb & (e > 1 - 2.5 / ay)] = Tissue.BONE_CORTEX
    dc = np.hypot(x, y - yk)
    bone = np.zeros_like(vb)
    if 0.2 < phase < 0.9:
        bone |= (dc >= sp.canal_r) & (dc < sp.canal_r + 6) & (y > yc + 0.6 * ay)
    if 0.4 < phase < 0.95:
        bone |= (np.abs(x) < 3) & (y > yk + sp.canal_r) & (y < yk + sp.canal_r + 26)
    if 0.4 < phase < 0.6 and z < anatomy.ribs.lowest_head_z:
        slant = yk - 3 + 0.25 * (np.abs(x) - sp.canal_r)
        bone |= (np.abs(y - slant) < 3.5) & (np.abs(x) > sp.canal_r) & (np.abs(x) < ax + 20)
    t[bone] = Tissue.BONE_CORTEX
    t[dc < sp.canal_r] = Tissue.CSF
    full[win] = vb | bone | (dc < sp.canal_r)
    return full


def _draw_ribs(t: np.ndarray, pl: _Plane, z: float, scale: float, anatomy: Anatomy) -> np.ndarray:
    ribs = anatomy.ribs
    outer = scale * pl.cage
    band = (pl.rho < outer) & (pl.rho >= outer - ribs.thickness_mm) & (pl.angle > _RIB_START)
    u = z + pl.rib_drop - ribs.lowest_head_z
    index = np.round(u / ribs.level_mm)
    reach = np.asarray(ribs.reach)[np.clip(index, 0, len(ribs.reach) - 1).astype(int)]
    rib = band & (np.abs(u - index * ribs.level_mm) < ribs.height_mm / 2) & (index >= 0)
    rib &= (index < len(ribs.reach)) & (pl.angle <= reach)
    t[rib] = Tissue.RIB
    t[rib & (pl.angle > ribs.cartilage_from)] = Tissue.CARTILAGE
    sternum = np.zeros_like(rib)
    if z > anatomy.pelvis.sternum_z:
        win, mask = _ellipse(pl, -scale * ribs.cage_semi[0] + 5, 0.0, 6, 14)
        sternum[win] = mask
        t[sternum] = Tissue.RIB
    return rib | sternum


def _draw_pelvis(t: np.ndarray, pl: _Plane, z: float, anatomy: Anatomy) -> np.ndarray:
    pv = anatomy.pelvis
    if z >= pv.crest_z:
        return np.zeros(t.shape, bool)
    cy, cx = pv.wing_center
    spread = np.clip((pv.crest_z - z) / 25.0, 0.3, 1.0) * np.radians(38)
    bone = np.zeros(t.shape, bool)
    for side in (-1, 1):
        lateral = side * pl.x - cx
        dist = np.hypot(lateral, pl.y - cy)
        alpha = np.arctan2(pl.y - cy, lateral) - np.radians(28)
        bone |= (np.abs(dist - pv.wing_radius) < pv.wing_mm / 2) & (np.abs(alpha) < spread)
    t[bone] = Tissue.BONE_MARROW
    t[bone & ~_eroded(bone)] = Tissue.BONE_CORTEX
    return bone


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours are all in ``mask``."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _draw_lungs(t: np.ndarray, lab: np.ndarray, pl: _Plane, z: float, scale: float,
                anatomy: Anatomy) -> None:
    """Lung above the diaphragm (a muscle sheet over the domes), inside the rib cage, where
    nothing else was drawn; the spine's surroundings stay mediastinum."""
    free = SOFT[t] & (lab == 0) & (pl.rho < scale * pl.cage - anatomy.ribs.thickness_mm)
    spine_zone = np.zeros_like(free)
    win, mask = _ellipse(pl, float(anatomy.spine.body_y(z)) + 15, 0.0, 48, 40)
    spine_zone[win] = mask
    sheet = anatomy.diaphragm.thickness_mm
    t[free & (z > pl.dome + sheet) & ~spine_zone] = Tissue.LUNG
    t[free & (z > pl.dome) & (z <= pl.dome + sheet)] = Tissue.MUSCLE


def render(anatomy: Anatomy, grid: Grid, extra: Sequence[Structure] = (),
           texture: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tissue codes and labels (uint8 ``(D, H, W)``); ``extra`` structures (tumors) are drawn
    after the anatomy's own. ``texture`` (float32 ``(D, H, W)``), if given, receives the smooth
    soft-tissue texture field (standard deviation 1)."""
    pl = _plane(grid, anatomy)
    zs, ys, xs = grid.axes
    scale = anatomy.body.z_scale(zs)
    tissue = np.zeros(grid.shape, np.uint8)
    labels = np.zeros(grid.shape, np.uint8)
    for k, z in enumerate(zs):
        fields = anatomy.fields.sample(zs[k:k + 1], ys, xs)[:, 0]
        if texture is not None:
            texture[k] = fields[2]
        _draw_walls(tissue[k], float(z), float(scale[k]), pl, anatomy, fields)
    for s in (*anatomy.structures, *extra):
        draw_structure(s, grid, tissue, labels, pl.dome)
    for k, z in enumerate(zs):
        z, t, lab = float(z), tissue[k], labels[k]
        if z > float(pl.dome.min()):
            _draw_lungs(t, lab, pl, z, float(scale[k]), anatomy)
        bone = _draw_spine(t, pl, z, anatomy)
        bone |= _draw_ribs(t, pl, z, float(scale[k]), anatomy)
        bone |= _draw_pelvis(t, pl, z, anatomy)
        lab[bone] = 0
    return tissue, labels
