"""DICOM-SEG output: frames on their source slices (checked from the files, not through our
reader), segments and codes from the schema, round trips through slicevos-infer and the
labeller on phantom and real series, and the bad inputs."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from slicevos.cli.infer_volume import main as infer
from slicevos.errors import InputError, InputWarning
from slicevos.io import load_labels, load_volume, save_labels
from slicevos.io.dicom_seg import (
    dicom_seg_path,
    load_dicom_seg_labels,
    read_seg_source,
    save_dicom_seg,
    seg_source_for,
)
from slicevos.io.labels import FLARE22, FLARE23, OBJECTS
from slicevos.io.nifti import save_volume

pydicom = pytest.importorskip("pydicom", minversion="3.0")
hd = pytest.importorskip("highdicom")
# conftest and test_dicom: tests/ is on sys.path (it has no __init__.py), as pytest loaded them
from conftest import real_case  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage, generate_uid  # noqa: E402
from test_dicom import AXIAL, ORIGIN, SAGITTAL, slice_normal, write_slice  # noqa: E402

CLASSES = (1, 2, 13, 7, 14)  # flare23 ids, one per file: liver, kidneys R/L, adrenal R, tumor
ROWS, COLS = 12, 16
MARKER = 2000  # stored value of file k's marker: MARKER + 100 k, at (row k + 1, column 2 k + 1)


def study(**overrides) -> dict:
    attributes = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(),
                  "PatientID": "P1", "PatientName": "Doe^Jane", "StudyDate": "20240102",
                  "StudyTime": "101010", "AccessionNumber": "A1", "StudyID": "S1"}
    return {**attributes, **overrides}


def write_seg_series(folder: Path, orientation=AXIAL, n: int = len(CLASSES), shape=(ROWS, COLS),
                     **overrides) -> list[Path]:
    """``n`` slices 2.5 mm apart whose file names are not in slice order (a, c, e, b, d, ...);
    file ``k`` has one marker pixel that encodes ``k`` (see MARKER)."""
    folder.mkdir()
    extra, series_uid = study(**overrides), generate_uid()
    names = [f"{chr(ord('a') + i)}.dcm" for i in range(n)]
    names = names[::2] + names[1::2]
    paths = []
    for k in range(n):
        stored = np.zeros(shape, np.uint16)
        stored[k + 1, 2 * k + 1] = MARKER + 100 * k
        paths.append(write_slice(folder / names[k], ORIGIN + 2.5 * k * slice_normal(orientation),
                                 orientation, stored, instance=k + 1, series_uid=series_uid,
                                 extra=extra))
    return paths


def marker_labels(volume) -> np.ndarray:
    """Canonical labels made from the HU values alone: file k's marker gets CLASSES[k]."""
    k = np.rint((volume.hu - (MARKER - 1024)) / 100).astype(int)
    on = volume.hu > 0
    labels = np.zeros(volume.shape, np.uint8)
    labels[on] = np.asarray(CLASSES)[k[on]]
    return labels


def read_quietly(path: Path, source, schema) -> tuple:
    """pydicom, highdicom and our reader on ``path`` with every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = pydicom.dcmread(path)
        hd.seg.segread(path)
        labels = load_dicom_seg_labels(path, source, schema)
    return ds, labels


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_frames_lie_on_their_source_slices(tmp_path, orientation):
    files = write_seg_series(tmp_path / "ct", orientation)
    volume = load_volume(tmp_path / "ct")
    labels = marker_labels(volume)
    assert sorted(np.unique(labels)) == [0, *sorted(CLASSES)]

    path = save_dicom_seg(labels, volume, tmp_path / "out" / "case_seg.dcm", FLARE23)
    ds, back = read_quietly(path, volume, FLARE23)
    np.testing.assert_array_equal(back, labels)

    by_uid = {pydicom.dcmread(f).SOPInstanceUID: (k, f) for k, f in enumerate(files)}
    names = {item.SegmentNumber: item.SegmentLabel for item in ds.SegmentSequence}
    frames = ds.pixel_array.reshape(-1, ROWS, COLS)
    assert len(frames) == len(files)  # one non-empty frame per file; empty ones are left out
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        k, file = by_uid[source.ReferencedSOPInstanceUID]
        segment = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        assert names[segment] == FLARE23.by_id(CLASSES[k]).name
        assert np.argwhere(frame).tolist() == [[k + 1, 2 * k + 1]]
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                                   pydicom.dcmread(file).ImagePositionPatient)


def test_seg_header_references_the_series_and_says_who_made_it(tmp_path):
    files = write_seg_series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    path = save_dicom_seg(marker_labels(volume), tmp_path / "ct", tmp_path / "x_seg.dcm", FLARE23,
                          algorithm_type="AUTOMATIC")
    ds, source = pydicom.dcmread(path), pydicom.dcmread(files[0])
    assert ds.SOPClassUID == SegmentationStorage and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY" and ds.BitsAllocated == 1
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # uncompressed: lossless
    assert ds.Manufacturer == "slicevos" and ds.SeriesDescription == "slicevos segmentation"
    import slicevos

    assert ds.SoftwareVersions == slicevos.__version__
    for same in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        assert ds[same].value == source[same].value, same
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert len(referenced.ReferencedInstanceSequence) == len(files)
    again = save_dicom_seg(marker_labels(volume), tmp_path / "ct", tmp_path / "y_seg.dcm", FLARE23)
    assert pydicom.dcmread(again).SeriesInstanceUID != ds.SeriesInstanceUID  # new UIDs each time
    assert {item.SegmentAlgorithmType for item in ds.SegmentSequence} == {"AUTOMATIC"}


def test_segments_carry_the_schemas_names_codes_and_colours(tmp_path):
    write_seg_series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    ds = pydicom.dcmread(save_dicom_seg(marker_labels(volume), volume, tmp_path / "s.dcm",
                                        FLARE23))
    assert [item.SegmentLabel for item in ds.SegmentSequence] == [
        FLARE23.by_id(i).name for i in sorted(CLASSES)]  # absent classes left out, id order
    assert [item.SegmentNumber for item in ds.SegmentSequence] == [1, 2, 3, 4, 5]
    for item in ds.SegmentSequence:
        cls = FLARE23.by_id(FLARE23.id_of(item.SegmentLabel))
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodeMeaning) == (cls.codes.category.value,
                                                              cls.codes.category.meaning)
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == (cls.codes.type.value, "SCT")
        modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifier[0].CodeMeaning if modifier else None) == (
            cls.codes.laterality.meaning if cls.codes.laterality else None)
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        assert np.abs(np.subtract(rgb, cls.color)).max() <= 1


SCT_NAMES = {  # class -> pydicom codes.SCT attribute of its type (and laterality)
    "liver": ("Liver",), "right_kidney": ("Kidney", "Right"), "spleen": ("Spleen",),
    "pancreas": ("Pancreas",), "aorta": ("Aorta",), "inferior_vena_cava": ("InferiorVenaCava",),
    "right_adrenal_gland": ("AdrenalGland", "Right"),
    "left_adrenal_gland": ("AdrenalGland", "Left"), "gallbladder": ("Gallbladder",),
    "esophagus": ("Esophagus",), "stomach": ("Stomach",), "duodenum": ("Duodenum",),
    "left_kidney": ("Kidney", "Left"), "tumor": ("Neoplasm",),
}


def _same(ours, theirs) -> bool:
    return (ours.value, ours.scheme, ours.meaning) == (
        theirs.value, theirs.scheme_designator, theirs.meaning)


def test_schema_codes_are_pydicoms_snomed_codes():
    for cls in FLARE23.classes:
        kind, *side = SCT_NAMES[cls.name]
        assert _same(cls.codes.type, getattr(codes.SCT, kind)), cls.name
        assert (cls.codes.laterality is None) == (not side), cls.name
        if side:
            assert _same(cls.codes.laterality, getattr(codes.cid244, side[0])), cls.name
        category = ("MorphologicallyAbnormalStructure" if cls.name == "tumor"
                    else "AnatomicalStructure")
        assert _same(cls.codes.category, getattr(codes.cid7150, category)), cls.name
    for cls in OBJECTS.classes[:3]:
        assert _same(cls.codes.category, codes.cid7150.Tissue)
        assert _same(cls.codes.type, codes.SCT.Tissue)


def test_empty_labels_write_no_seg_and_remove_a_stale_one(tmp_path):
    write_seg_series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    stale = save_dicom_seg(marker_labels(volume), volume, tmp_path / "s_seg.dcm", FLARE23)
    assert stale.exists()
    assert save_dicom_seg(np.zeros(volume.shape, np.uint8), volume, stale, FLARE23) is None
    assert not stale.exists()


def test_a_segment_renamed_elsewhere_is_found_by_its_codes(tmp_path):
    write_seg_series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    labels = marker_labels(volume)
    path = save_dicom_seg(labels, volume, tmp_path / "s_seg.dcm", FLARE23)
    ds = pydicom.dcmread(path)
    for item in ds.SegmentSequence:  # as a user may rename them in 3D Slicer
        item.SegmentLabel = f"Segment_{item.SegmentNumber}"
    ds.save_as(path)
    np.testing.assert_array_equal(load_dicom_seg_labels(path, volume, FLARE23), labels)
    with pytest.raises(InputError, match="is no single class of schema objects"):
        load_dicom_seg_labels(path, volume, OBJECTS)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "attribute"), [
    ("del", "FrameOfReferenceUID"), ("empty", "SOPInstanceUID"), ("del", "Modality"),
])
def test_a_series_without_what_a_seg_needs_names_the_file_and_attribute(tmp_path, change,
                                                                         attribute):
    files = write_seg_series(tmp_path / "ct")
    ds = pydicom.dcmread(files[2])
    if change == "del":
        delattr(ds, attribute)
    else:
        setattr(ds, attribute, "")
    ds.save_as(files[2])
    volume = load_volume(tmp_path / "ct")  # the CT itself is fine
    with pytest.raises(InputError, match=attribute) as err:
        read_seg_source(volume)
    assert str(err.value).startswith(str(files[2])) and "Fix:" in str(err.value)
    with pytest.raises(InputError, match=attribute):
        seg_source_for(volume, True)
    with pytest.warns(InputWarning, match=f"{attribute}.*no DICOM-SEG is written"):
        assert seg_source_for(volume, None) is None  # automatic: a warning, and go on
    assert seg_source_for(volume, False) is None


def test_missing_highdicom_is_an_error_only_when_asked_for(tmp_path, monkeypatch):
    write_seg_series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(InputError, match=r'pip install "slicevos\[dicomseg\]"'):
        seg_source_for(volume, True)
    with pytest.warns(InputWarning, match=r'needs highdicom.*pip install "slicevos\[dicomseg\]"'):
        assert seg_source_for(volume, None) is None


def test_nifti_input_with_dicom_seg_fails_before_inference(tmp_path, capsys):
    write_seg_series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    scan = save_volume(volume.hu, volume, tmp_path / "ct.nii.gz")
    keys = save_labels(marker_labels(volume), volume, tmp_path / "keys.nii.gz")
    args = [str(scan), str(tmp_path / "out.nii.gz"), "--keys", str(keys), "--schema", "flare23",
            "--quiet", "--device", "cpu"]
    assert infer([*args, "--dicom-seg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {scan}: a DICOM-SEG needs a DICOM series") and "Fix:" in err
    assert not (tmp_path / "out.nii.gz").exists()
    with pytest.raises(InputError, match="needs a DICOM series"):
        save_dicom_seg(marker_labels(volume), load_volume(scan), tmp_path / "s.dcm", FLARE23)


def test_a_seg_of_another_series_is_refused(tmp_path):
    write_seg_series(tmp_path / "a")
    write_seg_series(tmp_path / "b")
    volume = load_volume(tmp_path / "a")
    path = save_dicom_seg(marker_labels(volume), volume, tmp_path / "a_seg.dcm", FLARE23)
    with pytest.raises(InputError, match="references series"):
        load_dicom_seg_labels(path, tmp_path / "b", FLARE23)


# --- slicevos-infer and the labeller --------------------------------------------------------------

def _infer_round_trip(series: Path, keys: Path, out: Path, *options: str) -> np.ndarray:
    """slicevos-infer semi-automatic on ``series``; checks the SEG equals the NIfTI labels."""
    assert infer([str(series), str(out), "--keys", str(keys), "--schema", "flare22", "--quiet",
                  "--device", "cpu", *options]) == 0
    volume = load_volume(series)
    nifti, _ = load_labels(out, reference=volume.geometry)
    assert nifti.any()
    _, seg = read_quietly(dicom_seg_path(out), volume, FLARE22)
    np.testing.assert_array_equal(seg, nifti)
    return nifti


@pytest.mark.real
def test_infer_writes_the_seg_beside_the_labels_for_a_dicom_series(tmp_path):
    case = real_case("ct3slice")
    out = tmp_path / "ct3.nii.gz"
    _infer_round_trip(case / "dicom", case / "label_flare.nii.gz", out)  # automatic
    assert out.with_name("ct3_seg.dcm").exists()
    again = tmp_path / "again.nii.gz"
    assert infer([str(case / "dicom"), str(again), "--keys", str(case / "label_flare.nii.gz"),
                  "--schema", "flare22", "--quiet", "--device", "cpu", "--no-dicom-seg"]) == 0
    assert again.exists() and not dicom_seg_path(again).exists()


def _with_uids(src: Path, dst: Path) -> Path:
    """A copy of a series whose anonymiser blanked the UIDs, with them filled in (SOP ones
    from each file's meta header)."""
    dst.mkdir()
    study_uid, series_uid = generate_uid(), generate_uid()
    for file in sorted(src.iterdir()):
        ds = pydicom.dcmread(file)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.save_as(dst / file.name)
    return dst


@pytest.mark.real
def test_infer_round_trip_on_the_real_dicom_series(tmp_path, capsys):
    case = real_case("example_ct_dicom20")
    pytest.importorskip("pylibjpeg")
    blank = case / "dicom"
    key_slices = ["--key-slices", "3,10,16"]
    # as shared, the series has blank UIDs: --dicom-seg refuses it, naming a file
    assert infer([str(blank), str(tmp_path / "x.nii.gz"), "--keys",
                  str(case / "label_flare.nii.gz"), "--schema", "flare22", "--quiet",
                  "--device", "cpu", *key_slices, "--dicom-seg"]) == 2
    err = capsys.readouterr().err
    assert f"error: {blank}/" in err and "StudyInstanceUID" in err and "Fix:" in err
    series = _with_uids(blank, tmp_path / "dicom")
    volume = load_volume(series)
    labels, geometry = load_labels(case / "label_flare.nii.gz")  # LAS file, same scan
    assert np.allclose(geometry.canonical_affine, volume.geometry.canonical_affine, atol=1e-3)
    keys = save_labels(labels, volume, tmp_path / "keys.nii.gz")  # on the DICOM grid
    nifti = _infer_round_trip(series, keys, tmp_path / "out.nii.gz", *key_slices, "--dicom-seg")
    assert len(np.unique(nifti)) > 3


def test_labeller_save_writes_the_seg(tmp_path):
    from slicevos.labeler.state import open_labeler

    write_seg_series(tmp_path / "ct", n=6, shape=(48, 64))
    out = tmp_path / "out" / "labels.nii.gz"
    labeler = open_labeler(tmp_path / "ct", out, FLARE22)
    try:
        drawn = np.zeros(labeler.hu.shape[1:], np.uint8)
        drawn[10:30, 5:25], drawn[20:40, 40:60] = 1, 13
        labeler.paint_slice(2, drawn)
        saved = labeler.save()
    finally:
        labeler.close()
    seg = out.with_name("labels_seg.dcm")
    assert saved["dicom_seg"] == str(seg.resolve())
    volume = load_volume(tmp_path / "ct")
    nifti, _ = load_labels(out, reference=volume.geometry)
    assert (nifti[2] == drawn).all()
    np.testing.assert_array_equal(read_quietly(seg, volume, FLARE22)[1], nifti)


def test_labeller_dicom_seg_needs_a_dicom_scan(tmp_path):
    from slicevos.labeler.state import open_labeler

    write_seg_series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    scan = save_volume(volume.hu, volume, tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="needs a DICOM series"):
        open_labeler(scan, tmp_path / "l.nii.gz", FLARE22, dicom_seg=True)
    labeler = open_labeler(scan, tmp_path / "l.nii.gz", FLARE22)  # automatic: none, no warning
    try:
        assert labeler.seg_source is None
    finally:
        labeler.close()
