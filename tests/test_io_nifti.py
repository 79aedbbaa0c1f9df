"""NIfTI I/O: the canonical-grid contract, round trips in all 48 orientations, real data."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from conftest import REAL_CASES
from nibabel import orientations as ornt

from slicevos.io import FLARE22, Geometry, load_labels, load_volume, save_labels
from slicevos.io.nifti import label_map_path

SPACING = (2.5, 0.8, 0.7)  # (dz, dy, dx) mm


def canonical_affine(spacing=SPACING, origin=(-40.0, 30.0, -120.0)) -> np.ndarray:
    """Affine of a canonical (S, P, L) array in RAS+: axis0 -> +S, axis1 -> -A, axis2 -> -R."""
    dz, dy, dx = spacing
    aff = np.zeros((4, 4))
    aff[:3, 0] = (0, 0, dz)
    aff[:3, 1] = (0, -dy, 0)
    aff[:3, 2] = (-dx, 0, 0)
    aff[:3, 3] = origin
    aff[3, 3] = 1
    return aff


ALL_ORIENTATIONS = [
    np.array([[perm[i], flips[i]] for i in range(3)], dtype=float)
    for perm in itertools.permutations(range(3))
    for flips in itertools.product((1, -1), repeat=3)
]


def write_oriented(tmp_path, canonical: np.ndarray, transform: np.ndarray, name: str, dtype):
    """Store ``canonical`` in a file whose axes are permuted/flipped by ``transform``."""
    file_array = ornt.apply_orientation(canonical, transform).astype(dtype)
    affine = canonical_affine() @ ornt.inv_ornt_aff(transform, canonical.shape)
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(file_array, affine), path)
    return path, file_array, affine


def test_there_are_48_distinct_orientations():
    codes = {
        nib.aff2axcodes(canonical_affine() @ ornt.inv_ornt_aff(t, (4, 5, 6)))
        for t in ALL_ORIENTATIONS
    }
    assert len(codes) == 48


@pytest.mark.parametrize("transform", ALL_ORIENTATIONS, ids=lambda t: "".join(
    f"{int(a)}{'+' if f > 0 else '-'}" for a, f in t))
def test_roundtrip_every_orientation(tmp_path, transform):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(5, 7, 9)).astype(np.int16)
    labels = rng.integers(0, 14, size=hu.shape).astype(np.uint8)
    img_path, _, affine = write_oriented(tmp_path, hu, transform, "ct", np.int16)
    lab_path, lab_file, _ = write_oriented(tmp_path, labels, transform, "lab", np.uint8)

    vol = load_volume(img_path)
    assert vol.hu.dtype == np.float32 and vol.hu.shape == (5, 7, 9)
    np.testing.assert_array_equal(vol.hu, hu)
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(vol.geometry.canonical_affine, canonical_affine(), atol=1e-5)

    lab, _ = load_labels(lab_path, reference=vol, schema=FLARE22)
    np.testing.assert_array_equal(lab, labels)

    out = save_labels(lab, vol, tmp_path / "pred.nii.gz", FLARE22)
    written = nib.load(out)
    np.testing.assert_array_equal(np.asarray(written.dataobj), lab_file)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    assert written.get_data_dtype() == np.uint8


def test_nifti_scaling_is_honoured(tmp_path):
    raw = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol = load_volume(tmp_path / "scaled.nii.gz")
    assert vol.hu.min() == -1024.0 and vol.hu.max() == 2 * 23 - 1024.0


def test_oblique_affine_maps_to_nearest_axes(tmp_path):
    theta = np.deg2rad(10)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.8, 2.0])  # RAS-ish, tilted in-plane
    data = np.zeros((6, 5, 4), np.int16) - 1000
    data[0, 0, 3] = 500  # most left (i=0: +i is toward R), posterior (j=0), superior (k=3)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "obl.nii.gz")
    vol = load_volume(tmp_path / "obl.nii.gz")
    assert vol.shape == (4, 5, 6)
    z, y, x = np.argwhere(vol.hu == 500)[0]
    assert (z, y, x) == (3, 4, 5)  # superior slice, last row (posterior), last column (left)
    labels = (vol.hu > 0).astype(np.uint8)
    save_labels(labels, vol, tmp_path / "obl_lab.nii.gz")
    back = nib.load(tmp_path / "obl_lab.nii.gz")
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert np.asarray(back.dataobj)[0, 0, 3] == 1


def test_label_map_sidecar(tmp_path):
    vol_geom = Geometry(np.eye(4), (3, 3, 3))
    path = save_labels(np.zeros((3, 3, 3), np.uint8), vol_geom, tmp_path / "case_01.nii.gz", FLARE22)
    sidecar = label_map_path(path)
    assert sidecar.name == "case_01.json"
    import json

    data = json.loads(sidecar.read_text())
    assert data["labels"]["1"] == "liver" and data["labels"]["13"] == "left_kidney"
    assert data["schema"] == "flare22"


def _real_label_files(case_dir):
    return sorted(case_dir.glob("label_*.nii.gz"))


@pytest.mark.real
@pytest.mark.parametrize("case", REAL_CASES)
def test_real_volume_roundtrip(real_data, tmp_path, case):
    case_dir = real_data / case
    vol = load_volume(case_dir / "ct.nii.gz")
    src = nib.load(case_dir / "ct.nii.gz")
    assert vol.hu.shape == vol.geometry.canonical_shape
    assert sorted(vol.hu.shape) == sorted(src.shape)
    np.testing.assert_allclose(sorted(vol.spacing), sorted(src.header.get_zooms()[:3]), rtol=1e-5)
    for label_file in _real_label_files(case_dir):
        lab, _ = load_labels(label_file, reference=vol)
        out = save_labels(lab, vol, tmp_path / label_file.name)
        orig, back = nib.load(label_file), nib.load(out)
        np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(orig.dataobj))
        np.testing.assert_array_equal(back.affine, orig.affine)
        assert back.shape == orig.shape
        relabel, _ = load_labels(out, reference=vol)
        np.testing.assert_array_equal(relabel, lab)


@pytest.mark.real
def test_real_canonical_orientation_is_anatomical(real_data):
    """Liver (id 1) lies on the patient's right: small column indices in canonical order."""
    vol = load_volume(real_data / "example_ct_full112" / "ct.nii.gz")
    lab, _ = load_labels(real_data / "example_ct_full112" / "label_flare.nii.gz", vol, FLARE22)
    liver_x = np.argwhere(lab == 1)[:, 2].mean()
    spleen_x = np.argwhere(lab == 3)[:, 2].mean()
    assert liver_x < spleen_x
    # spine is posterior: bone (> 300 HU) centroid in the back half of the rows
    bone_y = np.argwhere(vol.hu > 300)[:, 1].mean()
    assert bone_y > vol.shape[1] / 2


def test_file_slice_indices_follow_the_file_axis() -> None:
    """An inferior-first (S) and a superior-first (I) file number their slices oppositely."""
    up = Geometry(np.diag([1.0, 1.0, 2.0, 1.0]), (4, 4, 10))
    down = Geometry(np.diag([1.0, 1.0, -2.0, 1.0]), (4, 4, 10))
    assert [up.slice_index(i) for i in (0, 3, 9)] == [0, 3, 9]
    assert [down.slice_index(i) for i in (0, 3, 9)] == [9, 6, 0]
    assert all(down.slice_index(down.slice_index(i)) == i for i in range(10))


def test_saved_key_list_counts_file_slices_and_reads_back(tmp_path) -> None:
    """save_labels writes canonical keys as the file's own slice indices; read_key_slices
    turns them back, empty keys included, on a superior-first (flipped) file."""
    import json

    from slicevos.inference.user_keys import read_key_slices
    from slicevos.io.volume import Volume

    geometry = Geometry(np.diag([1.0, 1.0, -2.0, 1.0]), (6, 5, 10))
    labels = np.zeros(geometry.canonical_shape, np.uint8)
    labels[2, 1:3, 1:3] = 1
    path = save_labels(labels, geometry, tmp_path / "keys.nii.gz", FLARE22, key_slices=[2, 7])
    assert json.loads(label_map_path(path).read_text())["key_slices"] == [2, 7]  # 9-7, 9-2
    volume = Volume(np.zeros(geometry.canonical_shape, np.float32) - 1000, geometry)
    keys = read_key_slices(path, volume, FLARE22)
    assert sorted(keys) == [2, 7] and keys[2].any() and not keys[7].any()
