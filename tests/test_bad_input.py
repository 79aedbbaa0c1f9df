"""Every bad NIfTI input gets a one-line InputError naming the file, the problem and the fix,
and nothing is written."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from slicevos.errors import InputError, InputWarning
from slicevos.io import FLARE22, FLARE23, load_labels, load_volume, save_labels


def write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def ct(shape=(8, 9, 10), value=-500):
    rng = np.random.default_rng(1)
    return (rng.normal(value, 300, size=shape)).astype(np.int16)


def assert_one_line(err: pytest.ExceptionInfo, path, *words):
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert "Fix:" in msg
    for w in words:
        assert w.lower() in msg.lower(), msg


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "nope.nii.gz")
    assert_one_line(err, tmp_path / "nope.nii.gz", "not found")


def test_truncated_gzip(tmp_path):
    path = write(tmp_path / "ct.nii.gz", ct((64, 64, 32)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert_one_line(err, path, "truncated")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert_one_line(err, path, "NIfTI")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "ct.png"
    path.write_bytes(b"x")
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert_one_line(err, path, ".png")


def test_2d_array(tmp_path):
    path = write(tmp_path / "slice.nii.gz", ct((32, 32)))
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert_one_line(err, path, "2 dimensions")


def test_4d_with_several_volumes(tmp_path):
    path = write(tmp_path / "dyn.nii.gz", ct((8, 8, 4, 3)))
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert_one_line(err, path, "3 volumes")


def test_4d_with_one_volume_is_accepted(tmp_path):
    path = write(tmp_path / "one.nii.gz", ct((8, 8, 4, 1)))
    assert load_volume(path).shape == (4, 8, 8)


def test_zero_slices(tmp_path):
    path = write(tmp_path / "empty.nii.gz", np.zeros((8, 8, 0), np.int16))
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert_one_line(err, path, "zero")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(tmp_path, bad):
    data = ct().astype(np.float32)
    data[1, 2, 3] = bad
    path = write(tmp_path / "nan.nii.gz", data)
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert_one_line(err, path, "NaN or infinite")


def test_non_hu_data_warns(tmp_path):
    path = write(tmp_path / "png_like.nii.gz", np.random.default_rng(0).integers(0, 256, (8, 8, 8)).astype(np.uint8))
    with pytest.warns(InputWarning, match="Hounsfield"):
        load_volume(path)


def test_hu_data_does_not_warn(tmp_path, recwarn):
    load_volume(write(tmp_path / "ok.nii.gz", ct()))
    assert not [w for w in recwarn if issubclass(w.category, InputWarning)]


def test_label_shape_mismatch(tmp_path):
    vol = load_volume(write(tmp_path / "ct.nii.gz", ct((8, 9, 10))))
    lab = write(tmp_path / "lab.nii.gz", np.zeros((8, 9, 11), np.uint8))
    with pytest.raises(InputError) as err:
        load_labels(lab, reference=vol)
    assert_one_line(err, lab, "shape")


def test_label_affine_mismatch(tmp_path):
    vol = load_volume(write(tmp_path / "ct.nii.gz", ct()))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    lab = write(tmp_path / "lab.nii.gz", np.zeros((8, 9, 10), np.uint8), shifted)
    with pytest.raises(InputError) as err:
        load_labels(lab, reference=vol)
    assert_one_line(err, lab, "affine", "5 mm")


def test_label_values_outside_schema(tmp_path):
    data = np.zeros((8, 9, 10), np.uint8)
    data[0, 0, 0] = 14
    lab = write(tmp_path / "lab.nii.gz", data)
    with pytest.raises(InputError) as err:
        load_labels(lab, schema=FLARE22)
    assert_one_line(err, lab, "[14]", "flare22")
    labels, _ = load_labels(lab, schema=FLARE23)  # tumor is valid in FLARE23
    assert labels.max() == 14


def test_label_values_beyond_uint8(tmp_path):
    data = np.zeros((4, 4, 4), np.int16)
    data[0, 0, 0] = 300
    lab = write(tmp_path / "lab.nii.gz", data)
    with pytest.raises(InputError) as err:
        load_labels(lab)
    assert_one_line(err, lab, "300")


def test_non_integer_labels(tmp_path):
    lab = write(tmp_path / "lab.nii.gz", np.full((4, 4, 4), 0.5, np.float32))
    with pytest.raises(InputError) as err:
        load_labels(lab)
    assert_one_line(err, lab, "non-integer")


def test_failed_save_writes_nothing(tmp_path):
    vol = load_volume(write(tmp_path / "ct.nii.gz", ct()))
    with pytest.raises(ValueError):
        save_labels(np.zeros((3, 3, 3), np.uint8), vol, tmp_path / "out.nii.gz")
    with pytest.raises(InputError):
        save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    vol = load_volume(write(tmp_path / "ct.nii.gz", ct()))

    def boom(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError):
        save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
