"""Every bad NIfTI input gets a one-line InputError naming the file, the problem and the fix,
and nothing is written."""

from __future__ import annotations

import gzip
import subprocess
import sys

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


# ---- unusable affines: an InputError, never a guessed geometry ----------------------------
def raw_nifti(path, data, qform_code=1, sform_code=1, srow=None, zero_pixdim=False):
    """Write ``data`` as NIfTI bytes by hand (``.gz`` compressed by name): nibabel itself
    refuses to write zero voxel sizes. ``srow``: (3, 4) sform rows; ``zero_pixdim``: pixdim[1:4]
    = 0, which makes the qform (built from pixdim) unusable."""
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    if srow is not None:
        for name, row in zip(("srow_x", "srow_y", "srow_z"), np.asarray(srow), strict=True):
            img.header[name] = row
    raw = bytearray(img.header.binaryblock) + bytes(4) + data.tobytes(order="F")
    if zero_pixdim:
        raw[80:92] = bytes(12)  # pixdim[1], [2], [3]: float32 at byte 80
    path.write_bytes(gzip.compress(bytes(raw)) if str(path).endswith(".gz") else bytes(raw))
    return path


ZERO_SFORM = np.zeros((3, 4))
SINGULAR_SFORM = np.array([[0.8, 0, 0, 0], [0, 0.8, 0, 0], [0, 0, 0, 0]])  # no z axis


@pytest.mark.parametrize(("case", "kwargs", "words"), [
    ("sform_zero_qform_zero", dict(srow=ZERO_SFORM, zero_pixdim=True), ["sform (sform_code 1)"]),
    ("sform_zero", dict(srow=ZERO_SFORM), ["sform (sform_code 1)", "singular"]),
    ("sform_singular", dict(qform_code=0, srow=SINGULAR_SFORM), ["sform", "singular"]),
    ("qform_only_zero_pixdim", dict(sform_code=0, zero_pixdim=True),
     ["qform (qform_code 1, sform_code 0)", "voxel sizes [0.0, 0.0, 0.0]"]),
    ("no_transform_zero_pixdim", dict(qform_code=0, sform_code=0, zero_pixdim=True),
     ["pixdim voxel sizes"]),
])
def test_unusable_affine_is_an_input_error(tmp_path, case, kwargs, words):
    for name, data in (("ct.nii.gz", ct()), ("lab.nii", np.zeros((8, 9, 10), np.uint8))):
        path = raw_nifti(tmp_path / name, data, **kwargs)
        with pytest.raises(InputError) as err:
            (load_volume if name.startswith("ct") else load_labels)(path)
        assert_one_line(err, path, "unusable affine", "re-export", *words)


def test_a_broken_qform_beside_a_valid_sform_is_ignored(tmp_path):
    """nibabel uses the sform when sform_code > 0; the qform does not matter then."""
    path = raw_nifti(tmp_path / "ct.nii.gz", ct(), zero_pixdim=True)
    assert load_volume(path).spacing == pytest.approx((2.5, 0.8, 0.8))
    out = tmp_path / "seg.nii.gz"
    save_labels(np.zeros((10, 9, 8), np.uint8), load_volume(path), out)
    np.testing.assert_allclose(nib.load(out).affine, np.diag([0.8, 0.8, 2.5, 1.0]))


def test_input_warnings_print_on_one_line(tmp_path) -> None:
    """A tool's input warning is one line, ``warning: FILE: problem. Fix: ...``, without
    Python's module path and source line."""
    ct = tmp_path / "bright.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.integers(0, 400, (24, 24, 12)).astype(np.int16), np.eye(4)), ct)
    keys = tmp_path / "keys.nii.gz"
    drawn = np.zeros((24, 24, 12), np.uint8)
    drawn[8:14, 8:14, 3] = 1
    nib.save(nib.Nifti1Image(drawn, np.eye(4)), keys)
    done = subprocess.run([sys.executable, "-m", "slicevos.cli.infer_volume", str(ct),
                           str(tmp_path / "seg.nii.gz"), "--keys", str(keys), "--schema",
                           "flare22", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "Hounsfield" in line]
    assert len(warned) == 1
    assert warned[0].startswith(f"warning: {ct}: intensities range") and ". Fix: " in warned[0]
    assert "warn_if_not_hu" not in done.stderr and "Warning:" not in done.stderr
