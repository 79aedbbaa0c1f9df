"""Supervoxel pseudo-objects: ids, connectivity, edges followed, the dataset the CLI writes
goes through prepare-data into training clips, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage", reason="scikit-image (the tracks extra) is not installed")

import cc3d  # noqa: E402

from slicevos.cli.make_supervoxels import case_id_of  # noqa: E402
from slicevos.cli.make_supervoxels import main as make_supervoxels  # noqa: E402
from slicevos.cli.prepare_data import main as prepare_data  # noqa: E402
from slicevos.data.cache import SliceCache  # noqa: E402
from slicevos.data.clips import ClipData, ClipDataConfig  # noqa: E402
from slicevos.data.supervoxels import SupervoxelConfig, supervoxel_objects  # noqa: E402
from slicevos.errors import InputError  # noqa: E402
from slicevos.io.nifti import load_labels, save_volume  # noqa: E402
from slicevos.phantom import PhantomConfig, make_phantom  # noqa: E402

SMALL = SupervoxelConfig(segment_mm=25.0, working_mm=1.0, min_volume_ml=0.2)


def _two_tissue_body() -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 40 HU body in air, its left half at 200 HU: one intensity edge down the middle."""
    hu = np.full((24, 64, 64), -1000.0, np.float32)
    hu[2:22, 6:58, 6:58] = 40.0
    hu[2:22, 6:58, 32:58] = 200.0
    return hu, (2.0, 1.0, 1.0)


def test_ids_are_consecutive_connected_and_inside_the_body():
    hu, spacing = _two_tissue_body()
    labels = supervoxel_objects(hu, spacing, SMALL)
    assert labels.dtype == np.uint8 and labels.shape == hu.shape
    ids = np.unique(labels)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, ids.size))
    assert ids.size - 1 >= 4
    assert not labels[hu <= -500].any()
    assert labels[hu > -500].all()
    for i in ids[1:]:
        assert cc3d.connected_components(labels == i, connectivity=26).max() == 1
    assert np.array_equal(labels, supervoxel_objects(hu, spacing, SMALL))


def test_supervoxels_follow_the_intensity_edge():
    hu, spacing = _two_tissue_body()
    labels = supervoxel_objects(hu, spacing, SMALL)
    bright = hu == 200.0
    for i in np.unique(labels)[1:]:
        share = bright[labels == i].mean()
        assert share < 0.05 or share > 0.95, f"supervoxel {i} straddles the edge ({share:.2f})"


def test_the_cap_on_objects_and_the_working_grid():
    phantom = make_phantom(3, PhantomConfig(shape=(16, 96, 96)))
    capped = supervoxel_objects(phantom.hu, phantom.spacing,
                                SupervoxelConfig(segment_mm=10.0, max_objects=12))
    assert 1 <= capped.max() <= 12
    coarse = SupervoxelConfig(segment_mm=30.0, working_mm=3 * max(phantom.spacing[1:]))
    labels = supervoxel_objects(phantom.hu, phantom.spacing, coarse)
    assert labels.shape == phantom.hu.shape and labels.max() >= 2


def test_bad_input_raises_one_line_errors():
    with pytest.raises(InputError, match="3D"):
        supervoxel_objects(np.zeros((8, 8), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="Hounsfield"):
        supervoxel_objects(np.full((8, 16, 16), -1000.0, np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="max_objects"):
        SupervoxelConfig(max_objects=300)


def test_case_ids():
    from pathlib import Path
    assert case_id_of(Path("/d/real/lidc/ct.nii.gz"), "_sv") == "lidc_sv"
    assert case_id_of(Path("/d/imagesTr/case_7_0000.nii.gz"), "") == "case_7"


def test_cli_dataset_trains_clips(tmp_path, capsys):
    phantom = make_phantom(5, PhantomConfig(shape=(20, 96, 96)))
    ct = save_volume(np.round(phantom.hu).astype(np.int16), phantom.geometry,
                     tmp_path / "scan.nii.gz")
    out = tmp_path / "sv"
    args = [str(ct), "--out-dir", str(out), "--segment-mm", "20", "--no-progress"]
    assert make_supervoxels(args) == 0
    label_file = out / "labelsTr" / "scan_sv.nii.gz"
    labels, _ = load_labels(label_file)
    assert labels.max() >= 3 and (out / "imagesTr" / "scan_sv_0000.nii.gz").is_symlink()
    stamp = label_file.stat().st_mtime_ns
    assert make_supervoxels(args) == 0 and label_file.stat().st_mtime_ns == stamp
    assert "kept 1 already there" in capsys.readouterr().out
    assert prepare_data([str(out), str(tmp_path / "cache"), "--schema", "objects"]) == 0
    assert SliceCache(tmp_path / "cache").labels("scan_sv").max() == labels.max()
    data = ClipData(ClipDataConfig(cache_dir=str(tmp_path / "cache"), crop_size=(64, 64),
                                   batch_size=2, min_object_pixels=20, max_gap_end=3))
    batch = data.batch(0)
    assert batch.images.shape[:3] == (2, 3, 3) and batch.masks.any()


def test_cli_refuses_a_missing_input(tmp_path, capsys):
    assert make_supervoxels([str(tmp_path / "nope.nii.gz"), "--out-dir", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_shipped_config_is_the_default():
    from pathlib import Path

    from slicevos.config import load_config
    path = Path(__file__).resolve().parents[1] / "configs" / "supervoxels" / "real_ct.yaml"
    assert load_config(path, SupervoxelConfig) == SupervoxelConfig()
