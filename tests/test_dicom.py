"""DICOM series reading: sorting, rescale, orientation, bad series, real data vs its NIfTI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from slicevos.errors import InputError, InputWarning
from slicevos.io import load_labels, load_volume, save_labels
from slicevos.io.dicom import load_dicom_series

pydicom = pytest.importorskip("pydicom", minversion="3.0")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

ROWS, COLS = 12, 16  # rows != columns, so a transposed read cannot pass
PIXEL_SPACING = (0.8, 0.7)  # DICOM order: (between rows, between columns) mm
AXIAL = (1, 0, 0, 0, 1, 0)
SAGITTAL = (0, 1, 0, 0, 0, -1)
CORONAL = (1, 0, 0, 0, 0, -1)
ORIGIN = np.array([-30.0, 20.0, -100.0])  # LPS mm
SERIES = "1.2.826.0.1.3680043.8.498.1"


def write_slice(path: Path, position, orientation=AXIAL, stored=None, *, slope=1.0,
                intercept=-1024.0, series_uid=SERIES, instance=1, modality="CT",
                thickness=None, extra=None) -> Path:
    """One uncompressed CT slice; ``stored`` is the raw (rows, columns) uint16 pixel array;
    ``extra``: more attributes (keyword -> value), e.g. the study's UIDs."""
    stored = np.zeros((ROWS, COLS), np.uint16) if stored is None else stored
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = modality, series_uid, instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
    ds.PixelSpacing = list(PIXEL_SPACING)
    if thickness is not None:
        ds.SliceThickness = thickness
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.astype(np.uint16).tobytes()
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def slice_normal(orientation) -> np.ndarray:
    iop = np.asarray(orientation, float)
    return np.cross(iop[:3], iop[3:])


def write_series(folder: Path, offsets, orientation=AXIAL, stored=None, **kw) -> list[Path]:
    """Slices at ``ORIGIN + offset * normal``; file names and InstanceNumbers run backwards."""
    folder.mkdir(exist_ok=True)
    n = len(offsets)
    return [
        write_slice(folder / f"im{n - k:03d}.dcm", ORIGIN + off * slice_normal(orientation),
                    orientation, None if stored is None else stored[k], instance=n - k, **kw)
        for k, off in enumerate(offsets)
    ]


def pixel_lps(position, orientation, row: int, col: int) -> np.ndarray:
    """LPS mm of pixel (row, col) of a slice, by the DICOM definition (PS3.3 C.7.6.2.1.1)."""
    iop = np.asarray(orientation, float)
    return (np.asarray(position, float) + col * PIXEL_SPACING[1] * iop[:3]
            + row * PIXEL_SPACING[0] * iop[3:])


# --- real data: the DICOM series equal the NIfTI made from them --------------------------------

@pytest.mark.real
@pytest.mark.parametrize("case", ["example_ct_dicom20", "ct3slice"])
def test_real_series_equals_its_nifti(real_data, case):
    dicom = load_volume(real_data / case / "dicom")
    nifti = load_volume(real_data / case / "ct.nii.gz")
    assert dicom.hu.dtype == np.float32
    assert dicom.hu.shape == nifti.hu.shape
    np.testing.assert_array_equal(dicom.hu, nifti.hu)
    assert np.allclose(dicom.geometry.canonical_affine, nifti.geometry.canonical_affine, atol=1e-3)
    assert np.allclose(dicom.spacing, nifti.spacing, atol=1e-4)
    assert dicom.geometry.header is None


# --- sorting, spacing, rescale ----------------------------------------------------------------

def test_shuffled_files_load_sorted_along_the_normal_with_rescale_per_slice(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    offsets = [7.5, 0.0, 10.0, 2.5, 5.0]  # shuffled on disk and in InstanceNumber
    for i, off in enumerate(offsets):
        stored = np.full((ROWS, COLS), 100 + int(off * 10), np.uint16)
        write_slice(folder / f"{i}.dcm", ORIGIN + (0, 0, off), stored=stored,
                    slope=2.0, intercept=-1000.0 - off, instance=i + 1)
    (folder / "notes.txt").write_text("not DICOM")
    write_slice(folder / "z_no_pixels.dcm", ORIGIN)  # then strip the image position: ignored
    ds = pydicom.dcmread(folder / "z_no_pixels.dcm")
    del ds.ImagePositionPatient
    ds.save_as(folder / "z_no_pixels.dcm")

    vol = load_dicom_series(folder)
    z = np.array(sorted(offsets))
    expected = (100 + z * 10) * 2.0 - 1000.0 - z  # each slice's own slope and intercept
    assert vol.hu.dtype == np.float32 and vol.hu.shape == (5, ROWS, COLS)
    np.testing.assert_allclose(vol.hu[:, 0, 0], expected)
    assert np.allclose(vol.spacing, (2.5, PIXEL_SPACING[0], PIXEL_SPACING[1]))
    # canonical slice 0 is the most inferior: ORIGIN z in LPS and RAS alike
    assert np.isclose(vol.geometry.canonical_affine[2, 3], ORIGIN[2])
    assert vol.path == folder


def test_single_slice_takes_spacing_from_slice_thickness(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    write_slice(folder / "a.dcm", ORIGIN, thickness=3.0)
    vol = load_dicom_series(folder)
    assert vol.hu.shape == (1, ROWS, COLS)
    assert np.allclose(vol.spacing, (3.0, PIXEL_SPACING[0], PIXEL_SPACING[1]))
    assert np.all(vol.hu == -1024)


# --- orientation ------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL, CORONAL], ids=["axial", "sagittal", "coronal"])
def test_marker_lands_at_its_canonical_index(tmp_path, orientation):
    n, marker_slice, row, col = 5, 3, 2, 13
    stored = np.zeros((n, ROWS, COLS), np.uint16)
    stored[marker_slice, row, col] = 3000
    offsets = np.arange(n) * 2.5
    write_series(tmp_path / "s", offsets, orientation, stored)
    vol = load_dicom_series(tmp_path / "s")

    # every voxel centre in LPS, by the DICOM definition; canonical axes are +z, +y, +x in LPS
    positions = [ORIGIN + off * slice_normal(orientation) for off in offsets]
    centres = np.array([pixel_lps(p, orientation, r, c) for p in positions
                        for r in range(ROWS) for c in range(COLS)])
    axes = [np.unique(np.round(centres[:, a], 4)) for a in (2, 1, 0)]
    marker = np.round(pixel_lps(positions[marker_slice], orientation, row, col), 4)
    expected = tuple(int(np.searchsorted(ax, marker[a])) for ax, a in zip(axes, (2, 1, 0), strict=True))

    assert vol.hu.shape == tuple(len(ax) for ax in axes)
    assert np.unravel_index(int(vol.hu.argmax()), vol.hu.shape) == expected
    assert vol.hu[expected] == 3000 - 1024
    assert nib.aff2axcodes(vol.geometry.canonical_affine) == ("S", "P", "L")


def test_oblique_series_affine_maps_marker_to_its_patient_position(tmp_path):
    a, b = np.radians(25), np.radians(15)
    oblique = (np.cos(a), np.sin(a), 0, -np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), -np.sin(b))
    n, marker_slice, row, col = 4, 1, 9, 4
    stored = np.zeros((n, ROWS, COLS), np.uint16)
    stored[marker_slice, row, col] = 3000
    offsets = np.arange(n) * 3.0
    write_series(tmp_path / "s", offsets, oblique, stored)
    vol = load_dicom_series(tmp_path / "s")

    index = np.unravel_index(int(vol.hu.argmax()), vol.hu.shape)
    ras = vol.geometry.canonical_affine @ np.array([*index, 1.0])
    position = ORIGIN + offsets[marker_slice] * slice_normal(oblique)
    lps = pixel_lps(position, oblique, row, col)
    np.testing.assert_allclose(ras[:3], lps * (-1, -1, 1), atol=1e-3)
    assert nib.aff2axcodes(vol.geometry.canonical_affine) == ("S", "P", "L")


def test_saved_labels_reload_on_the_dicom_grid_and_sit_on_the_patient(tmp_path):
    n, marker_slice, row, col = 4, 2, 3, 11
    stored = np.zeros((n, ROWS, COLS), np.uint16)
    stored[marker_slice, row, col] = 3000
    write_series(tmp_path / "s", np.arange(n) * 2.0, SAGITTAL, stored)
    vol = load_dicom_series(tmp_path / "s")
    labels = (vol.hu > 0).astype(np.uint8) * 7
    labels[0, 0, :3] = 2  # an asymmetric extra, so a flip would show

    out = save_labels(labels, vol, tmp_path / "seg.nii.gz")
    reloaded, geometry = load_labels(out, reference=vol.geometry)
    np.testing.assert_array_equal(reloaded, labels)
    assert geometry.same_grid(vol.geometry)

    img = nib.load(out)  # an outside viewer puts label 7 on the marker's patient position
    voxel = np.argwhere(np.asarray(img.dataobj) == 7)[0]
    position = ORIGIN + 2 * 2.0 * slice_normal(SAGITTAL)
    expected_ras = pixel_lps(position, SAGITTAL, row, col) * (-1, -1, 1)
    np.testing.assert_allclose(nib.affines.apply_affine(img.affine, voxel), expected_ras, atol=1e-3)


# --- bad series -------------------------------------------------------------------------------

@pytest.mark.parametrize(("offsets", "match"), [
    ([0, 2, 4, 8, 10], r"missing slices: 1 gap\(s\).* step of 2 mm, between positions -96\.00 to -92\.00 mm"),
    ([0, 2, 4, 6.7, 8.7, 10.7], r"non-uniform slice spacing: steps range 2\.000\.\.2\.700 mm"),
    ([0, 2, 2, 4], r"1 duplicate slice position\(s\)"),
], ids=["gap", "non-uniform", "duplicate"])
def test_irregular_slice_positions_are_rejected(tmp_path, offsets, match):
    folder = tmp_path / "s"
    write_series(folder, offsets)
    with pytest.raises(InputError, match=match) as err:
        load_dicom_series(folder)
    assert str(err.value).startswith(str(folder)) and "Fix:" in str(err.value)


def test_two_series_in_one_folder_are_rejected_with_their_uids(tmp_path):
    folder = tmp_path / "mixed"
    write_series(folder, [0, 2, 4], series_uid="1.2.3.100")
    for k, off in enumerate([0, 2, 4]):
        write_slice(folder / f"b{k}.dcm", ORIGIN + (0, 0, off), series_uid="1.2.3.200")
    with pytest.raises(InputError, match=r"holds 2 DICOM series: 1\.2\.3\.\d00 \(3 images\)") as err:
        load_dicom_series(folder)
    assert "1.2.3.100" in str(err.value) and "1.2.3.200" in str(err.value)
    assert "own folder" in str(err.value)


def test_a_localizer_in_the_series_is_rejected(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, [0, 2, 4])
    write_slice(folder / "scout.dcm", ORIGIN, CORONAL)
    with pytest.raises(InputError, match="images differ in ImageOrientationPatient"):
        load_dicom_series(folder)


def test_folder_without_dicom_is_rejected(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "series_1").mkdir()
    with pytest.raises(InputError, match=r"no single-frame DICOM CT images among its 1 file") as err:
        load_volume(tmp_path)
    assert "series_1" in str(err.value)


def test_non_ct_images_are_skipped_with_a_warning(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, [0, 2, 4])
    write_slice(folder / "pet.dcm", ORIGIN, modality="PT", series_uid="9.9")
    with pytest.warns(InputWarning, match="skipped 1 PT image"):
        vol = load_dicom_series(folder)
    assert vol.hu.shape == (3, ROWS, COLS)


def test_missing_pydicom_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(InputError, match=r'pip install "slicevos\[dicom\]"'):
        load_dicom_series(tmp_path)


def write_undecodable_jpeg2000(folder: Path) -> Path:
    path = write_slice(folder / "a.dcm", ORIGIN)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"not a JPEG 2000 codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    return path


def test_undecodable_pixel_data_names_the_decoder(tmp_path):
    path = write_undecodable_jpeg2000(tmp_path)
    with pytest.raises(InputError, match=r"cannot decode pixel data \(JPEG 2000.*pylibjpeg-openjpeg") as err:
        load_dicom_series(tmp_path)
    assert str(err.value).startswith(str(path))


def test_jpeg2000_without_a_decoder_says_what_to_install(tmp_path):
    write_undecodable_jpeg2000(tmp_path)
    code = ("import sys; sys.modules['pylibjpeg'] = sys.modules['gdcm'] = sys.modules['PIL'] = None\n"
            "from slicevos.errors import InputError\n"
            "from slicevos.io.dicom import load_dicom_series\n"
            "try: load_dicom_series(sys.argv[1])\n"
            "except InputError as err: print(err)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert "missing dependencies" in out
    assert 'pip install pylibjpeg pylibjpeg-openjpeg' in out
