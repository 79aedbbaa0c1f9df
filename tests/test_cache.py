"""Slice cache: dataset discovery, annotations, content, memmap reads, reruns, kills, bad cases."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from slicevos.cli.prepare_data import main as prepare_main
from slicevos.config import load_config
from slicevos.data.cache import SliceCache
from slicevos.data.cache_build import (
    TEST_EXIT_AFTER_ENV,
    PrepareConfig,
    parse_window,
    prepare_cache,
)
from slicevos.data.dataset_folder import discover_cases, load_annotations
from slicevos.errors import InputError
from slicevos.io import FLARE22, FLARE23, load_labels, load_volume
from slicevos.preprocessing import window_volume

REPO = Path(__file__).resolve().parents[1]
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
SHAPE = (32, 32, 8)  # file order (x, y, z); canonical (D, H, W) = (8, 32, 32)


def _save(data: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _labels(rng: np.random.Generator, class_ids: tuple[int, ...], shape=SHAPE) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for c in class_ids:
        x, y, z = rng.integers(0, 24), rng.integers(0, 24), rng.integers(0, 5)
        labels[x:x + 6, y:y + 6, z:z + 3] = c
    return labels


def make_dataset(root: Path, labeled=("case_a", "case_b"), unlabeled=("case_u",),
                 image_only=(), annotations: str | None = None, seed: int = 0,
                 classes=(1, 2, 3)) -> Path:
    """Tiny FLARE-layout folder: random int16 HU volumes, cubes of ``classes`` as labels."""
    rng = np.random.default_rng(seed)

    def ct() -> np.ndarray:
        return rng.integers(-1024, 1500, size=SHAPE).astype(np.int16)

    for case in labeled:
        _save(ct(), root / "imagesTr" / f"{case}_0000.nii.gz")
        _save(_labels(rng, classes), root / "labelsTr" / f"{case}.nii.gz")
    for case in image_only:
        _save(ct(), root / "imagesTr" / f"{case}_0000.nii.gz")
    for case in unlabeled:
        _save(ct(), root / "unlabeled" / f"{case}_0000.nii.gz")
    if annotations is not None:
        (root / "annotations.yaml").write_text(annotations)
    return root


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mtime_ns, bytes) of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _prepare(dataset: Path, cache: Path, **kwargs) -> object:
    overwrite = kwargs.pop("overwrite", False)
    config = PrepareConfig(**{"workers": 1, **kwargs})
    return prepare_cache(dataset, cache, config, overwrite=overwrite, progress=False)


def test_discover_layout_labeled_unlabeled_partial(tmp_path):
    ds = make_dataset(tmp_path / "ds", labeled=("c1", "c2"), unlabeled=("u1",),
                      image_only=("c3",), annotations="c2: [liver, 3]\n")
    (ds / "unlabeled" / "u2").mkdir()  # a DICOM series folder
    _save(np.zeros(SHAPE, np.int16), ds / "unlabeled" / "u3_0000.nii")
    cases = {c.case_id: c for c in discover_cases(ds, FLARE22)}
    assert list(cases) == ["c1", "c2", "c3", "u1", "u2", "u3"]
    assert cases["c1"].split == "labeled" and cases["c1"].annotated_class_ids == FLARE22.ids
    assert cases["c2"].annotated_class_ids == (1, 3)
    assert cases["c3"].split == "unlabeled" and cases["c3"].label_path is None
    assert cases["u2"].image_path == ds / "unlabeled" / "u2"
    assert cases["u3"].image_path.name == "u3_0000.nii"


def test_discover_rejects_folder_without_layout(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(InputError, match="no imagesTr/ or unlabeled/"):
        discover_cases(tmp_path / "ds", FLARE22)


@pytest.mark.parametrize("text, expected", [
    ("case_a: [tumor]\n", {"case_a": (14,)}),
    ("case_a: [1, 2, 3]\ncase_b: [liver, 14, spleen]\n", {"case_a": (1, 2, 3), "case_b": (1, 3, 14)}),
])
def test_annotations_by_name_and_id(tmp_path, text, expected):
    path = tmp_path / "annotations.yaml"
    path.write_text(text)
    assert load_annotations(path, FLARE23, {"case_a", "case_b"}) == expected


def test_annotations_json(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"case_a": ["tumor", 1]}))
    assert load_annotations(path, FLARE23, {"case_a"}) == {"case_a": (1, 14)}


@pytest.mark.parametrize("text, message", [
    ("case_a: [tumour]\n", "unknown class name 'tumour'"),
    ("case_a: [15]\n", "class id 15 is not in schema flare23"),
    ("case_zz: [liver]\n", "unknown case 'case_zz'"),
    ("case_a: []\n", "non-empty list"),
    ("- case_a\n", "expected a mapping"),
])
def test_annotations_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "annotations.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_annotations(path, FLARE23, {"case_a"})
    assert str(info.value).startswith(str(path))


def test_cache_content_matches_loaders(tmp_path):
    ds = make_dataset(tmp_path / "ds", annotations="case_b: [liver, right_kidney, spleen]\n")
    summary = _prepare(ds, tmp_path / "cache")
    assert sorted(m["case_id"] for m in summary.built) == ["case_a", "case_b", "case_u"]
    cache = SliceCache(tmp_path / "cache")
    assert cache.labeled_cases == ["case_a", "case_b"] and cache.unlabeled_cases == ["case_u"]
    assert cache.total_slices == summary.total_slices == 3 * 8
    for case in ("case_a", "case_u"):
        split_dir = "imagesTr" if case == "case_a" else "unlabeled"
        volume = load_volume(ds / split_dir / f"{case}_0000.nii.gz")
        image = cache.image(case)
        assert isinstance(image, np.memmap) and image.dtype == np.uint8
        assert image.shape == (8, 3, 32, 32)
        np.testing.assert_array_equal(image, window_volume(volume.hu))
        meta = cache.meta(case)
        assert meta["spacing"] == pytest.approx([3.0, 1.5, 1.5])
        assert (meta["num_slices"], meta["channels"], meta["height"], meta["width"]) == (8, 3, 32, 32)
        assert cache.geometry(case).same_grid(volume.geometry)
        assert set(meta["timing_s"]) == {"load", "window", "write", "total"}
    labels, _ = load_labels(ds / "labelsTr" / "case_a.nii.gz")
    np.testing.assert_array_equal(cache.labels("case_a"), labels)
    assert cache.labels("case_u") is None and cache.class_areas("case_u") is None
    meta = cache.meta("case_a")
    assert meta["split"] == "labeled" and not meta["partial"]
    assert meta["annotated_class_ids"] == list(FLARE22.ids)
    assert cache.meta("case_b")["partial"] and cache.meta("case_b")["annotated_class_ids"] == [1, 2, 3]
    areas = cache.class_areas("case_a")
    for class_id in (1, 2, 3):
        zs = np.flatnonzero((labels == class_id).any(axis=(1, 2)))
        stats = meta["classes"][str(class_id)]
        assert (stats["z_first"], stats["z_last"], stats["num_slices"]) == (zs[0], zs[-1], zs.size)
        assert stats["voxels"] == int((labels == class_id).sum()) == int(areas[:, class_id].sum())
    np.testing.assert_array_equal(areas[:, 2], (labels == 2).sum(axis=(1, 2)))


def test_slice_access_and_pickle(tmp_path):
    ds = make_dataset(tmp_path / "ds", labeled=("case_a",), unlabeled=("case_u",))
    _prepare(ds, tmp_path / "cache")
    cache = SliceCache(tmp_path / "cache")
    image, labels = cache.slice("case_a", 5)
    assert image.shape == (3, 32, 32) and labels.shape == (32, 32)
    assert not isinstance(image, np.memmap) and image.dtype == labels.dtype == np.uint8
    np.testing.assert_array_equal(image, cache.image("case_a")[5])
    np.testing.assert_array_equal(labels, cache.labels("case_a")[5])
    assert cache.slice("case_u", 0)[1] is None
    with pytest.raises(IndexError, match="slice 8 out of range"):
        cache.slice("case_a", 8)
    clone = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(clone.slice("case_a", 5)[0], image)


def test_reader_without_index_says_how_to_build(tmp_path):
    with pytest.raises(InputError, match="slicevos-prepare-data"):
        SliceCache(tmp_path)


def test_rerun_does_nothing_and_inputs_untouched(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    inputs = _files(ds)
    _prepare(ds, tmp_path / "cache")
    before = _files(tmp_path / "cache")
    summary = _prepare(ds, tmp_path / "cache")
    assert summary.built == [] and sorted(summary.skipped) == ["case_a", "case_b", "case_u"]
    assert _files(tmp_path / "cache") == before
    assert _files(ds) == inputs


def test_changed_settings_or_source_rebuild(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    cache_dir = tmp_path / "cache"
    _prepare(ds, cache_dir)
    same = _prepare(ds, cache_dir, windows=({"level": 40, "width": 400}, "chest", "spine"))
    assert same.built == []  # the same windows spelled differently
    assert SliceCache(cache_dir).windows[0] == {"name": None, "level": 40, "width": 400}
    summary = _prepare(ds, cache_dir, windows=("abdomen", "L60/W200"))
    assert len(summary.built) == 3
    cache = SliceCache(cache_dir)
    assert cache.image("case_a").shape == (8, 2, 32, 32)
    assert [w["level"] for w in cache.windows] == [40, 60]
    os.utime(ds / "labelsTr" / "case_b.nii.gz", ns=(1, 1))
    summary = _prepare(ds, cache_dir, windows=("abdomen", "L60/W200"))
    assert [m["case_id"] for m in summary.built] == ["case_b"]
    assert len(_prepare(ds, cache_dir, windows=("abdomen", "L60/W200"), overwrite=True).built) == 3
    assert not list((cache_dir / "cases").glob(".*"))


def test_labels_outside_annotated_classes_are_an_error(tmp_path):
    ds = make_dataset(tmp_path / "ds", labeled=("case_a",), unlabeled=(),
                      annotations="case_a: [liver]\n")
    with pytest.raises(InputError, match=r"class ids \[2, 3\].*case_a"):
        _prepare(ds, tmp_path / "cache")


def _break_case_b(ds: Path) -> Path:
    bad = ds / "labelsTr" / "case_b.nii.gz"
    _save(np.zeros((32, 32, 7), np.uint8), bad)
    return bad


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_case_stops_with_one_line_error(tmp_path, capsys, workers):
    ds = make_dataset(tmp_path / "ds")
    bad = _break_case_b(ds)
    cache_dir = tmp_path / "cache"
    rc = prepare_main([str(ds), str(cache_dir), "--workers", str(workers)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 2 and len(errors) == 1  # one line (stderr also has the progress bar)
    assert errors[0].startswith(f"error: {bad}: label shape (32, 32, 7) differs from image shape")
    assert not (cache_dir / "cases" / "case_b").exists()
    assert not list((cache_dir / "cases").glob(".*"))  # no temp folder left behind
    assert not (cache_dir / "index.json").exists()


def test_reader_refuses_a_half_rebuilt_cache(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    _prepare(ds, tmp_path / "cache")
    _break_case_b(ds)
    with pytest.raises(InputError, match="label shape"):
        _prepare(ds, tmp_path / "cache", windows=("abdomen",))  # rebuilds case_a, stops at b
    with pytest.raises(InputError, match="case_a/meta.json: built with other windows"):
        SliceCache(tmp_path / "cache")


def test_skip_bad_records_failure_and_goes_on(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds")
    bad = _break_case_b(ds)
    rc = prepare_main([str(ds), str(tmp_path / "cache"), "--workers", "1", "--skip-bad"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 built, 0 up to date, 1 failed" in out
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["cases"] == ["case_a", "case_u"]
    assert str(bad) in index["failed"]["case_b"] and "label shape" in index["failed"]["case_b"]
    assert SliceCache(tmp_path / "cache").case_ids == ["case_a", "case_u"]


def test_kill_mid_run_then_rerun_equals_uninterrupted(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, TEST_EXIT_AFTER_ENV: "1"}
    proc = subprocess.run([sys.executable, "-m", "slicevos.cli.prepare_data", str(ds), str(killed),
                           "--workers", "1"], env=env, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 75, proc.stderr
    finished = [p.name for p in (killed / "cases").iterdir() if not p.name.startswith(".")]
    assert finished == ["case_a"] and (killed / "cases" / "case_a" / "meta.json").is_file()
    partial = list((killed / "cases").glob(".case_b.tmp-*"))
    assert len(partial) == 1 and not (partial[0] / "meta.json").exists()
    assert not (killed / "index.json").exists()

    assert prepare_main([str(ds), str(killed), "--workers", "1"]) == 0
    assert prepare_main([str(ds), str(clean), "--workers", "2"]) == 0
    assert not list((killed / "cases").glob(".*"))
    a, b = _files(killed), _files(clean)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith("meta.json"):
            meta_a, meta_b = (json.loads(x[name][1]) for x in (a, b))
            meta_a.pop("timing_s"), meta_b.pop("timing_s")
            assert meta_a == meta_b, name
        else:
            assert a[name][1] == b[name][1], name


def test_cli_windows_and_config(tmp_path, capsys):
    assert parse_window("L-600/W1500") == {"name": "L-600/W1500", "level": -600.0, "width": 1500.0}
    assert parse_window("abdomen") == "abdomen"
    config = load_config(REPO / "configs" / "data" / "prepare.yaml", PrepareConfig)
    assert config == PrepareConfig()
    ds = make_dataset(tmp_path / "ds", labeled=("case_a",), unlabeled=())
    rc = prepare_main([str(ds), str(tmp_path / "cache"), "--windows", "abdomen", "liver"])
    assert rc == 2 and "--windows: invalid windows ['abdomen', 'liver']" in capsys.readouterr().err
    rc = prepare_main([str(ds), str(ds / "imagesTr" / "cache")])
    assert rc == 2 and "inside its inputs" in capsys.readouterr().err


def test_real_volumes_symlinked(real_data, tmp_path):
    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    (ds / "imagesTr" / "sm30_0000.nii.gz").symlink_to(real_data / "example_ct_sm30" / "ct.nii.gz")
    (ds / "labelsTr" / "sm30.nii.gz").symlink_to(real_data / "example_ct_sm30" / "label_flare.nii.gz")
    _prepare(ds, tmp_path / "cache")
    cache = SliceCache(tmp_path / "cache")
    volume = load_volume(real_data / "example_ct_sm30" / "ct.nii.gz")
    np.testing.assert_array_equal(cache.image("sm30"), window_volume(volume.hu))
    assert cache.meta("sm30")["spacing"] == pytest.approx(list(volume.spacing))
    assert "1" in cache.meta("sm30")["classes"]  # the liver is there
