"""DSC, NSD and the FLARE per-class scoring rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from slicevos.io.labels import FLARE22, FLARE23
from slicevos.io.nifti import load_labels
from slicevos.metrics import dice, dice_per_class, normalized_surface_dice, score_case

LIVER, AORTA, GALLBLADDER = 1, 5, 9  # aorta and gallbladder share the 2 mm tolerance
ISO = (1.0, 1.0, 1.0)


def ball(shape: tuple[int, int, int], radius_mm: float, spacing=ISO, centre=None) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of ``centre`` (voxel units)."""
    centre = centre if centre is not None else [s / 2 for s in shape]
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grid, centre, spacing, strict=True))
    return dist2 <= radius_mm**2


def box(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


# ---- DSC ---------------------------------------------------------------------------------

def test_dice_hand_computed():
    gt = np.zeros((4, 4), bool)
    gt[0, :] = True  # 4 voxels
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True
    pred[1, :2] = True  # 4 voxels, 2 overlap
    assert dice(gt, pred) == pytest.approx(2 * 2 / 8)
    assert dice(gt, gt) == 1.0
    assert dice(gt, np.roll(gt, 2, axis=0)) == 0.0
    assert dice(gt.astype(np.uint8) * 7, pred.astype(np.uint8)) == pytest.approx(0.5)


def test_dice_empty_rules():
    empty, some = np.zeros((3, 3, 3), bool), box((3, 3, 3), (0, 0, 0), (1, 1, 1))
    assert dice(empty, empty) == 1.0
    assert dice(empty, some) == 0.0
    assert dice(some, empty) == 0.0


def test_dice_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_dice_per_class_matches_binary_dice():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (8, 16, 16)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.3, rng.integers(0, 4, gt.shape), gt).astype(np.uint8)
    scores = dice_per_class(gt, pred, [1, 2, 3, 9])
    for c in (1, 2, 3):
        assert scores[c] == pytest.approx(dice(gt == c, pred == c))
        assert 0.5 < scores[c] < 1.0
    assert scores[9] == 1.0  # absent from both


# ---- NSD ---------------------------------------------------------------------------------

def test_nsd_empty_rules():
    empty, some = np.zeros((8, 8, 8), bool), box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    assert normalized_surface_dice(empty, empty, ISO, 1.0) == 1.0
    assert normalized_surface_dice(empty, some, ISO, 1.0) == 0.0
    assert normalized_surface_dice(some, empty, ISO, 1.0) == 0.0


def test_nsd_identical_masks_is_one():
    mask = ball((24, 24, 24), 7)
    assert normalized_surface_dice(mask, mask, (2.0, 0.7, 0.7), 0.0) == pytest.approx(1.0)


def test_nsd_concentric_spheres():
    """Radius 12 vs 15 mm: surfaces are 3 mm apart."""
    inner, outer = ball((48, 48, 48), 12), ball((48, 48, 48), 15)
    assert normalized_surface_dice(inner, outer, ISO, 4.0) > 0.99
    assert normalized_surface_dice(inner, outer, ISO, 3.0) > 0.9
    assert normalized_surface_dice(inner, outer, ISO, 1.0) < 0.05


def test_nsd_spheres_on_anisotropic_grid():
    """Physical spheres sampled at (2.5, 0.8, 0.8) mm: 3 mm apart in mm, not in voxels."""
    spacing, shape = (2.5, 0.8, 0.8), (20, 50, 50)
    inner, outer = ball(shape, 10, spacing), ball(shape, 13, spacing)
    assert normalized_surface_dice(inner, outer, spacing, 4.5) > 0.98
    assert normalized_surface_dice(inner, outer, spacing, 1.0) < 0.1


def test_nsd_shifted_cube_depends_on_spacing():
    """A cube moved one slice along axis 0 moves its end faces by dz mm."""
    cube = box((20, 20, 20), (5, 5, 5), (12, 12, 12))
    moved = np.roll(cube, 1, axis=0)
    assert normalized_surface_dice(cube, moved, (3.0, 1.0, 1.0), 3.0) == pytest.approx(1.0)
    assert normalized_surface_dice(cube, moved, (3.0, 1.0, 1.0), 2.9) < 0.9
    assert normalized_surface_dice(cube, moved, (1.0, 1.0, 1.0), 2.0) == pytest.approx(1.0)
    # the same voxel shift along axis 2 is only 1 mm with this spacing
    sideways = np.roll(cube, 1, axis=2)
    assert normalized_surface_dice(cube, sideways, (3.0, 1.0, 1.0), 1.0) == pytest.approx(1.0)


def test_nsd_object_on_array_border_matches_uncropped_library():
    """Cropping to the bounding box must not change the package's result."""
    from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances

    gt = box((10, 12, 14), (0, 2, 3), (6, 12, 9))
    pred = box((10, 12, 14), (1, 0, 3), (8, 11, 14))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = compute_surface_dice_at_tolerance(compute_surface_distances(gt, pred, [2, 1, 1]), 2)
    assert normalized_surface_dice(gt, pred, (2, 1, 1), 2) == pytest.approx(ref)


def _reference_nsd(gt: np.ndarray, pred: np.ndarray, spacing, tol: float) -> float:
    """Independent NSD on border voxels with scipy's exact distance transform."""
    def border(mask):
        padded = np.pad(mask, 1)
        return (padded & ~ndimage.binary_erosion(padded))[1:-1, 1:-1, 1:-1]

    gt_border, pred_border = border(gt), border(pred)
    gt_to_pred = ndimage.distance_transform_edt(~pred_border, sampling=spacing)[gt_border]
    pred_to_gt = ndimage.distance_transform_edt(~gt_border, sampling=spacing)[pred_border]
    hits = np.count_nonzero(gt_to_pred <= tol) + np.count_nonzero(pred_to_gt <= tol)
    return hits / (gt_border.sum() + pred_border.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8)])
def test_nsd_agrees_with_distance_transform_reference(seed, spacing):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((32, 40, 40)), 4)
    noise = ndimage.gaussian_filter(rng.standard_normal(field.shape), 3)
    gt = field > 0
    pred = field + 1.5 * field.std() * noise / noise.std() > 0
    for tol in (2.0, 3.0):
        ours = normalized_surface_dice(gt, pred, spacing, tol)
        assert 0.6 < ours < 0.95  # the blobs differ, so the comparison is not trivially 1 = 1
        # surfel areas (package) vs voxel counts (reference) differ by a few percent
        assert ours == pytest.approx(_reference_nsd(gt, pred, spacing, tol), rel=0.06)


# ---- FLARE per-class scoring -------------------------------------------------------------

def _tube(shape, z0: int, z1: int, label: int) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[z0:z1, 6:10, 6:10] = label
    return labels


@pytest.mark.parametrize("label, penalised", [(AORTA, False), (GALLBLADDER, True)])
def test_gt_slices_only_ignores_prediction_beyond_gt_slices(label, penalised):
    shape = (20, 16, 16)
    gt, pred = _tube(shape, 5, 15, label), _tube(shape, 0, 20, label)
    name = FLARE22.by_id(label).name
    score = score_case(gt, pred, ISO, FLARE22, classes=[label])[name]
    if penalised:
        assert score.dsc == pytest.approx(2 * 10 / (10 + 20))
        assert score.nsd < 0.9
    else:
        assert (score.dsc, score.nsd) == (1.0, 1.0)


def test_gt_slices_only_includes_last_gt_slice():
    """A miss on the topmost GT slice counts (the official script's off-by-one would hide it)."""
    gt, pred = _tube((20, 16, 16), 5, 15, AORTA), _tube((20, 16, 16), 5, 14, AORTA)
    score = score_case(gt, pred, ISO, FLARE22, classes=[AORTA])["aorta"]
    assert score.dsc == pytest.approx(2 * 9 / 19)


def test_gt_slices_only_prediction_only_outside_gt_slices_scores_zero():
    gt, pred = _tube((20, 16, 16), 5, 10, AORTA), _tube((20, 16, 16), 12, 18, AORTA)
    score = score_case(gt, pred, ISO, FLARE22, classes=["aorta"])["aorta"]
    assert (score.dsc, score.nsd) == (0.0, 0.0)


def test_score_case_empty_rules_per_class():
    shape = (10, 16, 16)
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    gt[2:6, 2:6, 2:6] = 2  # right kidney: GT only
    pred[2:6, 8:12, 8:12] = 3  # spleen: prediction only
    pred[7:9, 2:4, 2:4] = AORTA  # aorta predicted, GT has none: whole volume, 0
    scores = score_case(gt, pred, ISO, FLARE23)
    assert list(scores) == list(FLARE23.names)
    assert (scores["right_kidney"].dsc, scores["right_kidney"].nsd) == (0.0, 0.0)
    assert (scores["spleen"].dsc, scores["spleen"].nsd) == (0.0, 0.0)
    assert (scores["aorta"].dsc, scores["aorta"].nsd) == (0.0, 0.0)
    for name in ("liver", "esophagus", "tumor"):
        assert (scores[name].dsc, scores[name].nsd) == (1.0, 1.0)


def test_per_organ_tolerance_liver_passes_aorta_fails_at_4mm():
    shape = (24, 24, 40)
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    gt[4:20, 4:10, 4:14], pred[4:20, 4:10, 8:18] = LIVER, LIVER  # shifted 4 mm along x
    gt[4:20, 14:20, 20:30], pred[4:20, 14:20, 24:34] = AORTA, AORTA
    scores = score_case(gt, pred, ISO, FLARE22, classes=["liver", "aorta"])
    assert scores["liver"].dsc == pytest.approx(scores["aorta"].dsc)  # same overlap
    assert scores["liver"].nsd == pytest.approx(1.0)  # tolerance 5 mm
    assert scores["aorta"].nsd < 0.8  # tolerance 2 mm


def test_score_case_uses_spacing_per_axis():
    gt = np.zeros((12, 16, 16), np.uint8)
    gt[3:8, 4:12, 4:12] = LIVER
    pred = np.roll(gt, 2, axis=0)  # 2 slices
    fine = score_case(gt, pred, (2.0, 1.0, 1.0), FLARE22, classes=[LIVER])["liver"]
    coarse = score_case(gt, pred, (3.0, 1.0, 1.0), FLARE22, classes=[LIVER])["liver"]
    assert fine.nsd == pytest.approx(1.0)  # 4 mm <= 5 mm
    assert coarse.nsd < 0.9  # 6 mm > 5 mm
    assert fine.dsc == coarse.dsc


def test_score_case_unknown_class_is_input_error():
    from slicevos.errors import InputError

    labels = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(InputError, match="'kidney' is not in schema flare22"):
        score_case(labels, labels, ISO, FLARE22, classes=["kidney"])


def test_real_fast_vs_full_totalsegmentator(real_data):
    case = real_data / "example_ct_sm30"
    gt, geometry = load_labels(case / "label_flare.nii.gz", schema=FLARE22)
    pred, _ = load_labels(case / "label_flare_fast.nii.gz", reference=geometry, schema=FLARE22)
    scores = score_case(gt, pred, geometry.spacing, FLARE22)
    for organ in ("liver", "spleen", "right_kidney", "left_kidney", "stomach"):
        assert scores[organ].dsc > 0.9, organ
        assert scores[organ].nsd > 0.95, organ
    assert 0.6 < scores["pancreas"].dsc < 0.95
    assert (scores["esophagus"].dsc, scores["esophagus"].nsd) == (1.0, 1.0)  # absent in both
    assert 0.85 < np.mean([s.dsc for s in scores.values()]) < 0.99
