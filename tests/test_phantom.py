"""Synthetic CT phantoms: grid contract, anatomy, intensities, tumors, dataset writer, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion, generate_binary_structure

from slicevos.cli.make_phantoms import main as make_phantoms_main
from slicevos.config import load_config
from slicevos.errors import InputError
from slicevos.io import FLARE22, FLARE23, load_labels, load_volume
from slicevos.phantom import DEFAULT_ORGAN_HU, PhantomConfig, make_phantom
from slicevos.phantom.dataset import case_seed, write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
MEDIUM = PhantomConfig(shape=(48, 96, 96))  # default field of view: ~4.2 mm pixels, ~7.7 mm slices
ID = {c.name: c.id for c in FLARE23.classes}


@pytest.fixture(scope="module")
def medium():
    return {seed: make_phantom(seed, MEDIUM) for seed in (0, 1, 2)}


def centroid_mm(phantom, class_id: int) -> np.ndarray:
    """Centroid of a class in world RAS+ mm (through the phantom's geometry)."""
    index = np.argwhere(phantom.labels == class_id).mean(axis=0)
    return (phantom.geometry.canonical_affine @ np.append(index, 1.0))[:3]


def slice_dice(mask: np.ndarray, gap: int) -> np.ndarray:
    """Dice between slices k and k + gap, for the pairs where both hold the mask."""
    a, b = mask[:-gap], mask[gap:]
    both = a.any((1, 2)) & b.any((1, 2))
    inter = (a & b).sum((1, 2))[both]
    return 2 * inter / (a.sum((1, 2))[both] + b.sum((1, 2))[both])


@pytest.mark.parametrize("shape", [(16, 64, 64), (20, 48, 80)])
def test_shapes_dtypes_and_geometry(shape):
    ph = make_phantom(0, PhantomConfig(shape=shape))
    assert ph.hu.shape == shape and ph.hu.dtype == np.float32
    assert ph.labels.shape == shape and ph.labels.dtype == np.uint8
    assert ph.geometry.canonical_shape == shape
    assert nib.aff2axcodes(ph.geometry.affine) == ("L", "P", "S")
    assert ph.labels.max() <= 13 and ph.schema is FLARE22
    assert -1024 <= ph.hu.min() < -900 and ph.hu.max() > 500  # air outside, bone inside
    np.testing.assert_allclose(ph.spacing[1], 400.0 / max(shape[1:]), rtol=1e-6)


def test_explicit_spacing_is_kept():
    ph = make_phantom(0, PhantomConfig(shape=(10, 32, 32), spacing=(5.0, 2.0, 3.0)))
    np.testing.assert_allclose(ph.spacing, (5.0, 2.0, 3.0), rtol=1e-6)


def test_deterministic_per_seed_and_different_across_seeds():
    cfg = PhantomConfig(shape=(16, 64, 64))
    a, b, c = make_phantom(3, cfg), make_phantom(3, cfg), make_phantom(4, cfg)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.labels != c.labels).mean() > 0.01


def test_same_anatomy_at_another_grid():
    coarse = make_phantom(5, PhantomConfig(shape=(24, 64, 64)))
    fine = make_phantom(5, PhantomConfig(shape=(48, 128, 128)))
    other = make_phantom(6, PhantomConfig(shape=(48, 128, 128)))
    for organ in ("liver", "spleen", "right_kidney", "left_kidney", "aorta"):
        shift = np.linalg.norm(centroid_mm(coarse, ID[organ]) - centroid_mm(fine, ID[organ]))
        assert shift < 5.0, organ
    moved = [np.linalg.norm(centroid_mm(other, ID[o]) - centroid_mm(fine, ID[o]))
             for o in ("liver", "spleen", "right_kidney", "left_kidney")]
    assert max(moved) > 5.0  # another seed is another anatomy
    vol = {n: (p.labels == ID["liver"]).sum() * np.prod(p.spacing) for n, p in
           (("coarse", coarse), ("fine", fine))}
    assert vol["coarse"] == pytest.approx(vol["fine"], rel=0.1)


def test_all_organs_present_in_anatomical_places(medium):
    for seed, ph in medium.items():
        counts = np.bincount(ph.labels.ravel(), minlength=15)
        assert (counts[1:14] > 0).all(), f"seed {seed}: missing {np.flatnonzero(counts[1:14] == 0) + 1}"
        col = {n: np.argwhere(ph.labels == ID[n]).mean(0) for n in ID if counts[ID[n]]}
        # column 0 is the patient's right: liver and right kidney at small column indices
        assert col["liver"][2] < col["spleen"][2]
        assert col["right_kidney"][2] < col["left_kidney"][2]
        assert col["right_adrenal_gland"][2] < col["left_adrenal_gland"][2]
        assert col["inferior_vena_cava"][2] < col["aorta"][2]
        # row 0 is anterior: kidneys behind the pancreas, stomach in front of the spleen
        assert col["pancreas"][1] < col["left_kidney"][1]
        assert col["stomach"][1] < col["spleen"][1]
        # axis 0 runs up: esophagus above the liver centre, kidneys below it, adrenals above
        assert col["esophagus"][0] > col["liver"][0] > col["right_kidney"][0]
        assert col["right_adrenal_gland"][0] > col["right_kidney"][0]
        aorta_slices = (ph.labels == ID["aorta"]).any((1, 2)).mean()
        assert aorta_slices > 0.7
        esophagus_slices = np.flatnonzero((ph.labels == ID["esophagus"]).any((1, 2)))
        assert esophagus_slices.min() > ph.labels.shape[0] // 2  # superior part only
        # in the world frame (RAS+) the liver is on the patient's right: x > 0
        assert centroid_mm(ph, ID["liver"])[0] > 0 > centroid_mm(ph, ID["spleen"])[0]


def test_lung_bases_at_the_top_and_bones(medium):
    for ph in medium.values():
        lung = (ph.hu > -950) & (ph.hu < -700)
        fraction = lung.sum((1, 2)) / (ph.hu > -500).sum((1, 2))  # of the body, per slice
        lower_half = np.median(fraction[: len(fraction) // 2])  # bowel gas only
        assert fraction[-3:].min() > max(0.25, 2 * lower_half)
        bone = ph.hu > 300  # vertebrae on most slices (not at every disc), near the midline
        assert bone.any((1, 2)).mean() > 0.8
        assert abs(np.argwhere(bone).mean(0)[2] - (ph.hu.shape[2] - 1) / 2) < 3


def test_organ_intensities_near_configured(medium):
    for ph in medium.values():
        for name in ("liver", "spleen", "aorta", "inferior_vena_cava", "gallbladder", "pancreas"):
            assert abs(ph.organ_hu[name] - DEFAULT_ORGAN_HU[name]) <= MEDIUM.hu_jitter + 1e-6
            core = binary_erosion(ph.labels == ID[name], generate_binary_structure(3, 1))
            assert core.sum() > 10, name  # away from the edges (partial volume)
            assert np.median(ph.hu[core]) == pytest.approx(ph.organ_hu[name], abs=12), name
        kidneys = ph.hu[(ph.labels == ID["right_kidney"]) | (ph.labels == ID["left_kidney"])]
        assert np.median(kidneys) > 100  # contrast-enhanced


def test_organ_hu_override_and_noise_level():
    base = PhantomConfig(shape=(24, 96, 96), hu_jitter=0.0, organ_hu={"liver": 100.0})
    quiet = make_phantom(1, dataclasses.replace(base, noise_hu=0.0))
    noisy = make_phantom(1, dataclasses.replace(base, noise_hu=20.0))
    assert quiet.organ_hu["liver"] == 100.0 and quiet.organ_hu["spleen"] == DEFAULT_ORGAN_HU["spleen"]
    liver = binary_erosion(quiet.labels == ID["liver"], np.ones((1, 3, 3), bool))
    assert np.median(quiet.hu[liver]) == pytest.approx(100.0, abs=5)
    assert np.std(noisy.hu[liver] - quiet.hu[liver]) == pytest.approx(20.0, rel=0.1)


def test_tumors_only_when_asked_and_only_inside_host_organs():
    cfg = PhantomConfig(shape=(32, 96, 96))
    tumorous = dataclasses.replace(cfg, with_tumors=True, tumor_probability=1.0)
    hosts = [ID[n] for n in tumorous.tumor_organs]
    seen = 0
    for seed in range(4):
        plain, ph = make_phantom(seed, cfg), make_phantom(seed, tumorous)
        assert not (plain.labels == 14).any() and ph.schema is FLARE23
        tumor = ph.labels == 14
        seen += tumor.any()
        assert len(ph.tumors) >= 1 and all(t.organ in tumorous.tumor_organs for t in ph.tumors)
        assert np.isin(plain.labels[tumor], hosts).all()  # same anatomy, tumor replaced organ
        np.testing.assert_array_equal(ph.labels[~tumor], plain.labels[~tumor])
        for host in hosts:  # hypodense: darker than the organ it replaced
            core = binary_erosion(tumor & (plain.labels == host), np.ones((1, 3, 3), bool))
            if core.sum() > 5:
                name = FLARE22.by_id(host).name
                assert np.median(ph.hu[core]) < ph.organ_hu[name] - 10, name
    assert seen >= 3
    only_liver = make_phantom(0, dataclasses.replace(tumorous, tumor_organs=("liver",)))
    under = make_phantom(0, cfg).labels[only_liver.labels == 14]
    assert under.size and (under == ID["liver"]).all()


def test_unlisted_organs_are_drawn_but_not_labeled():
    cfg = PhantomConfig(shape=(16, 64, 64))
    full = make_phantom(2, cfg)
    part = make_phantom(2, dataclasses.replace(cfg, organs=("liver", "spleen")))
    assert set(np.unique(part.labels)) == {0, ID["liver"], ID["spleen"]}
    np.testing.assert_array_equal(part.hu, full.hu)


def test_slices_are_3d_consistent(medium):
    for ph in medium.values():
        liver = ph.labels == ID["liver"]
        assert np.median(slice_dice(liver, 1)) > 0.8
        assert np.median(slice_dice(liver, 1)) > np.median(slice_dice(liver, 6)) + 0.1


def test_bad_config_is_an_input_error():
    with pytest.raises(InputError, match=r"shape \(0, 64, 64\)"):
        PhantomConfig(shape=(0, 64, 64))
    with pytest.raises(InputError, match="unknown organ names.*'livr'"):
        PhantomConfig(organs=("livr",))
    with pytest.raises(InputError, match="spacing"):
        PhantomConfig(spacing=(1.0, -1.0, 1.0))


def test_default_yaml_matches_the_dataclass():
    assert load_config(REPO / "configs/phantom/default.yaml", PhantomConfig) == PhantomConfig()


SMALL = PhantomConfig(shape=(12, 48, 40))


def test_dataset_writer_layout_and_roundtrip(tmp_path):
    summary = write_phantom_dataset(tmp_path, 2, 1, SMALL, seed=7, progress=False)
    assert (summary.written, summary.skipped) == (3, 0)
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["dataset.json", "imagesTr/phantom_0000_0000.nii.gz",
                     "imagesTr/phantom_0001_0000.nii.gz", "labelsTr/phantom_0000.nii.gz",
                     "labelsTr/phantom_0001.nii.gz", "unlabeled/phantom_u0000_0000.nii.gz"]
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["complete"] and meta["schema"] == "flare22" and meta["labels"]["13"] == "left_kidney"
    assert (meta["numTraining"], meta["numUnlabeled"]) == (2, 1)
    assert meta["training"][1]["label"] == "labelsTr/phantom_0001.nii.gz"
    expected = make_phantom(case_seed(7, "labeled", 1), SMALL)
    volume = load_volume(tmp_path / "imagesTr/phantom_0001_0000.nii.gz")
    labels, _ = load_labels(tmp_path / "labelsTr/phantom_0001.nii.gz", reference=volume,
                            schema=FLARE22)
    np.testing.assert_array_equal(volume.hu, np.round(expected.hu))
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_allclose(volume.spacing, expected.spacing, rtol=1e-5)
    unlabeled = load_volume(tmp_path / "unlabeled/phantom_u0000_0000.nii.gz")
    np.testing.assert_array_equal(
        unlabeled.hu, np.round(make_phantom(case_seed(7, "unlabeled", 0), SMALL).hu))


def test_dataset_rerun_skips_and_rejects_other_settings(tmp_path):
    write_phantom_dataset(tmp_path, 1, 1, SMALL, seed=1, progress=False)
    image = tmp_path / "imagesTr/phantom_0000_0000.nii.gz"
    before = image.stat().st_mtime_ns
    again = write_phantom_dataset(tmp_path, 2, 1, SMALL, seed=1, progress=False)
    assert (again.written, again.skipped) == (1, 2)
    assert image.stat().st_mtime_ns == before
    with pytest.raises(InputError, match=r"other settings \(seed 1 vs 2\).*--overwrite"):
        write_phantom_dataset(tmp_path, 2, 1, SMALL, seed=2, progress=False)
    with pytest.raises(InputError, match="with_tumors"):
        write_phantom_dataset(tmp_path, 2, 1, SMALL, seed=1, with_tumor=True, progress=False)
    redone = write_phantom_dataset(tmp_path, 2, 1, SMALL, seed=1, with_tumor=True,
                                   overwrite=True, progress=False)
    assert (redone.written, redone.skipped) == (3, 0)
    assert json.loads((tmp_path / "dataset.json").read_text())["schema"] == "flare23"


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = make_phantoms_main([str(out), "--labeled", "1", "--unlabeled", "1", "--size", "48",
                             "--slices", "10", "--seed", "3", "--tumor",
                             "--config", str(REPO / "configs/phantom/default.yaml")])
    assert rc == 0 and "wrote 2 phantoms" in capsys.readouterr().out
    labels, _ = load_labels(out / "labelsTr/phantom_0000.nii.gz")
    assert labels.shape == (10, 48, 48)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["schema"] == "flare23" and meta["generator"]["config"]["shape"] == [10, 48, 48]
    rc = make_phantoms_main([str(out), "--labeled", "1", "--spacing", "1", "2", "3", "4"])
    assert rc == 2 and "--spacing: got 4 values" in capsys.readouterr().err
