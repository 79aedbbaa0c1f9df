"""Filtering: thresholds (absolute, top fraction, ties), per-organ partial labels, the dataset
folder written for the next round, the CLI, and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
import yaml

from slicevos.cli.filter_pseudo_labels import main
from slicevos.data.dataset_folder import discover_cases
from slicevos.errors import InputError, InputWarning
from slicevos.io import FLARE22, load_labels, load_volume, save_labels
from slicevos.pseudo import (
    CaseRecord,
    CaseScore,
    ConsensusScore,
    FilterConfig,
    consensus_score,
    fuse_members,
    score_pseudo_folder,
    select_cases,
    write_accepted_dataset,
)
from slicevos.pseudo.consensus import DEFAULT_VARIANT
from tests.conftest import real_case


# ---------------------------------------------------------------- selection rules (no files)
def fake_score(case_id: str, per_class: dict[int, float]) -> CaseScore:
    present = tuple(per_class)
    volume = float(np.mean(list(per_class.values()))) if per_class else 0.0
    record = CaseRecord(case_id, Path("/absent") / case_id, Path("/absent/img.nii.gz"), FLARE22,
                        None)
    return CaseScore(record, ConsensusScore(volume, dict(per_class), present, DEFAULT_VARIANT))


def accepted(decisions) -> list[str]:
    return [d.case_id for d in decisions if d.accepted]


def test_absolute_threshold_accepts_scores_at_or_above():
    scores = [fake_score(f"c{i}", {1: s}) for i, s in enumerate([0.95, 0.9, 0.89, 0.5])]
    decisions = select_cases(scores, FilterConfig(threshold=0.9))
    assert accepted(decisions) == ["c0", "c1"]
    assert [d.class_ids for d in decisions] == [(1,), (1,), (), ()]
    assert not any(d.partial for d in decisions)


def test_top_fraction_rank_and_ties():
    scores = [fake_score(f"c{i}", {1: s}) for i, s in enumerate([0.5, 0.8, 0.9, 0.8, 0.2])]
    # 5 cases: top 0.2 -> 1 case; top 0.4 -> ceil(2) = 2nd best is 0.8, tied with c3 -> 3 cases
    assert accepted(select_cases(scores, FilterConfig(top_fraction=0.2))) == ["c2"]
    assert accepted(select_cases(scores, FilterConfig(top_fraction=0.4))) == ["c1", "c2", "c3"]
    assert len(accepted(select_cases(scores, FilterConfig(top_fraction=1.0)))) == 5


def test_empty_consensus_and_min_organs():
    scores = [fake_score("empty", {}), fake_score("one", {1: 1.0}),
              fake_score("two", {1: 1.0, 2: 1.0})]
    assert accepted(select_cases(scores, FilterConfig(top_fraction=1.0))) == ["one", "two"]
    assert accepted(select_cases(scores, FilterConfig(threshold=0.0, min_organs=2))) == ["two"]


def test_per_organ_keeps_confident_organs_of_rejected_volumes():
    scores = [fake_score("good", {1: 0.99, 2: 0.97}),
              fake_score("mixed", {1: 0.95, 2: 0.4, 3: 0.92})]
    whole_only = select_cases(scores, FilterConfig(threshold=0.9))
    assert accepted(whole_only) == ["good"]
    per_organ = select_cases(scores, FilterConfig(threshold=0.9, per_organ=True))
    assert [(d.accepted, d.partial, d.class_ids) for d in per_organ] == [
        (True, False, (1, 2)), (True, True, (1, 3))]
    assert per_organ[1].per_class == {1: 0.95, 2: 0.4, 3: 0.92}
    lenient = select_cases(scores, FilterConfig(threshold=0.9, per_organ=True, organ_threshold=0.3))
    assert lenient[1].class_ids == (1, 2, 3)
    strict = select_cases(scores, FilterConfig(threshold=0.9, per_organ=True, min_organs=3))
    assert not strict[1].accepted


def test_organ_threshold_prunes_the_organs_of_accepted_volumes():
    scores = [fake_score("sure", {1: 0.95, 2: 0.9}), fake_score("one_bad", {1: 0.95, 2: 0.3}),
              fake_score("all_weak", {1: 0.55, 2: 0.55}), fake_score("low", {1: 0.2})]
    decisions = select_cases(scores, FilterConfig(threshold=0.5, organ_threshold=0.6))
    assert [(d.case_id, d.accepted, d.partial, d.class_ids) for d in decisions] == [
        ("sure", True, False, (1, 2)),          # every organ clears: a whole volume
        ("one_bad", True, True, (1,)),          # its poorly agreed organ becomes unannotated
        ("all_weak", False, False, ()),         # volume passes, no organ does: nothing to learn
        ("low", False, False, ())]
    two = select_cases(scores, FilterConfig(threshold=0.5, organ_threshold=0.6, min_organs=2))
    assert [d.case_id for d in two if d.accepted] == ["sure"]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "neither"), ({"threshold": 0.5, "top_fraction": 0.5}, "both"),
    ({"threshold": 1.5}, "filter.threshold"), ({"top_fraction": 0.0}, "filter.top_fraction"),
    ({"threshold": 0.5, "variant": "iou"}, "filter.variant"),
    ({"threshold": 0.5, "min_organs": 0}, "filter.min_organs"),
])
def test_filter_config_rejects_bad_values(kwargs, message):
    with pytest.raises(InputError, match=message):
        FilterConfig(**kwargs)


# ---------------------------------------------------------------- a synthetic pseudo folder
def write_image(path: Path) -> Path:
    """A tiny CT NIfTI, file array 16x16x8 (RAS, 1x1x2 mm) -> canonical (8, 16, 16)."""
    hu = np.full((16, 16, 8), -1000, np.int16)
    hu[3:13, 3:13] = 40
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return path


def organs(shift1: int = 0, shift2: int = 0) -> np.ndarray:
    """Canonical (8, 16, 16) labels: liver (1) and right kidney (2), shifted along W."""
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[1:7, 2:8, 2 + shift1:8 + shift1] = 1
    labels[2:6, 10:14, 2 + shift2:6 + shift2] = 2
    return labels


def write_pseudo_case(pseudo: Path, case_id: str, image: Path, members: np.ndarray,
                      complete: bool = True) -> None:
    volume = load_volume(image)
    case = pseudo / case_id
    case.mkdir(parents=True)
    np.savez_compressed(case / "members.npz", labels=members,
                        member_names=np.array([f"m{i}" for i in range(len(members))]))
    save_labels(fuse_members(members, FLARE22.num_classes), volume, case / "pseudo_label.nii.gz")
    if complete:
        record = {"case_id": case_id, "image": str(image.absolute()), "schema": "flare22",
                  "members": [f"m{i}" for i in range(len(members))],
                  "consensus": consensus_score(members, FLARE22.ids).to_dict()}
        (case / "case.json").write_text(json.dumps(record))


@pytest.fixture()
def pseudo(tmp_path: Path) -> Path:
    """good: members agree; mixed: liver agrees, kidney does not; bad: both disagree;
    partial_run: no case.json (generation killed)."""
    root = tmp_path / "pseudo"
    designs = {"good": [organs(), organs(), organs()],
               "mixed": [organs(), organs(), organs(shift2=4)],
               "bad": [organs(), organs(shift1=3, shift2=3), organs(shift1=5, shift2=6)]}
    for case_id, members in designs.items():
        image = write_image(tmp_path / "src" / f"{case_id}_0000.nii.gz")
        write_pseudo_case(root, case_id, image, np.stack(members))
    image = write_image(tmp_path / "src" / "partial_run_0000.nii.gz")
    write_pseudo_case(root, "partial_run", image, np.stack([organs()] * 2), complete=False)
    return root


def test_score_folder_skips_incomplete_and_recomputes_other_variants(pseudo):
    with pytest.warns(InputWarning, match="partial_run"):
        scores = score_pseudo_folder(pseudo)
    by_id = {s.case_id: s.consensus for s in scores}
    assert list(by_id) == ["bad", "good", "mixed"]
    assert by_id["good"].volume == 1.0 and by_id["mixed"].per_class[1] == 1.0
    assert by_id["mixed"].per_class[2] < 0.9 and by_id["bad"].volume < by_id["mixed"].volume
    with pytest.warns(InputWarning):
        paper = score_pseudo_folder(pseudo, "paper_iou_majority")
    assert all(s.consensus.variant == "paper_iou_majority" for s in paper)
    assert paper[0].consensus.volume != scores[0].consensus.volume
    (pseudo / "bad" / "members.npz").unlink()
    with pytest.warns(InputWarning), pytest.raises(InputError, match="members file missing"):
        score_pseudo_folder(pseudo, "paper_iou_majority")


def test_per_organ_dataset_folder(pseudo, tmp_path):
    with pytest.warns(InputWarning):
        scores = score_pseudo_folder(pseudo)
    decisions = select_cases(scores, FilterConfig(threshold=0.95, per_organ=True))
    assert [(d.case_id, d.accepted, d.partial, d.class_ids) for d in decisions] == [
        ("bad", False, False, ()), ("good", True, False, (1, 2)), ("mixed", True, True, (1,))]
    out = write_accepted_dataset(decisions, pseudo, tmp_path / "round1", cutoff=0.95)
    cases = {c.case_id: c for c in discover_cases(out, FLARE22)}
    assert {k: c.split for k, c in cases.items()} == {"good": "labeled", "mixed": "labeled",
                                                      "bad": "unlabeled"}
    # a pseudo-label annotates only the organs its file holds: the members found liver and
    # right kidney only, so the other 11 organs are unannotated, not background
    assert cases["good"].annotated_class_ids == (1, 2)
    assert cases["mixed"].annotated_class_ids == (1,)
    assert yaml.safe_load((out / "annotations.yaml").read_text()) == {"good": [1, 2], "mixed": [1]}
    assert (out / "imagesTr" / "good_0000.nii.gz").is_symlink()
    assert (out / "unlabeled" / "bad_0000.nii.gz").resolve() == tmp_path / "src" / "bad_0000.nii.gz"
    mixed_image = load_volume(cases["mixed"].image_path)
    mixed, _ = load_labels(out / "labelsTr" / "mixed.nii.gz", reference=mixed_image)
    fused = fuse_members(np.stack([organs(), organs(), organs(shift2=4)]), 14)
    assert np.array_equal(mixed, np.where(fused == 1, 1, 0))   # kidney dropped, liver kept
    good, _ = load_labels(out / "labelsTr" / "good.nii.gz")
    assert np.array_equal(good, organs())
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["case_id"] for r in rows] == ["bad", "good", "mixed"]
    assert rows[2]["kept_classes"] == "liver" and rows[2]["partial"] == "1"
    assert float(rows[2]["liver"]) == 1.0 and rows[2]["spleen"] == ""
    png = cv2.imread(str(out / "scores_histogram.png"))
    red = (png == [0, 0, 230]).all(axis=-1)                       # the cutoff line, lossless PNG
    assert png.shape == (420, 640, 3) and red[:, 50 + int(0.95 * 570)].sum() > 300


def test_base_dataset_is_merged(pseudo, tmp_path):
    base = tmp_path / "base"
    for case_id, labels in (("lab1", organs()), ("lab2", organs() * (organs() == 2))):
        image = write_image(base / "imagesTr" / f"{case_id}_0000.nii.gz")
        save_labels(labels, load_volume(image), base / "labelsTr" / f"{case_id}.nii.gz")
    (base / "annotations.yaml").write_text("lab2: [right_kidney]\n")
    for case_id in ("good", "mixed", "bad", "other"):
        write_image(base / "unlabeled" / f"{case_id}_0000.nii.gz")
    with pytest.warns(InputWarning):
        decisions = select_cases(score_pseudo_folder(pseudo), FilterConfig(top_fraction=0.3))
    out = write_accepted_dataset(decisions, pseudo, tmp_path / "next", base)
    split = {c.case_id: (c.split, c.annotated_class_ids) for c in discover_cases(out, FLARE22)}
    assert split == {"lab1": ("labeled", FLARE22.ids), "lab2": ("labeled", (2,)),
                     "good": ("labeled", (1, 2)), "bad": ("unlabeled", ()),
                     "mixed": ("unlabeled", ()), "other": ("unlabeled", ())}
    other = out / "unlabeled" / "other_0000.nii.gz"
    assert other.resolve() == base / "unlabeled" / "other_0000.nii.gz"
    clash = [d for d in decisions if d.case_id == "good"][0]
    lab1 = (base / "labelsTr" / "lab1.nii.gz").read_bytes()
    (base / "labelsTr" / "good.nii.gz").write_bytes(lab1)
    (base / "unlabeled" / "good_0000.nii.gz").rename(base / "imagesTr" / "good_0000.nii.gz")
    with pytest.raises(InputError, match="already labeled"):
        write_accepted_dataset([clash], pseudo, tmp_path / "clash", base)


def test_a_class_that_loses_every_vote_is_not_annotated(tmp_path):
    """One member of three finds the spleen: it is present (scored) but absent from the fused
    label, so the label file must not call the spleen background."""
    spleen = organs()
    spleen[3:5, 2:5, 10:13] = 3
    image = write_image(tmp_path / "src" / "vote_0000.nii.gz")
    write_pseudo_case(tmp_path / "pseudo", "vote", image, np.stack([organs(), organs(), spleen]))
    scores = score_pseudo_folder(tmp_path / "pseudo")
    assert scores[0].consensus.present == (1, 2, 3)
    decisions = select_cases(scores, FilterConfig(threshold=0.0))
    out = write_accepted_dataset(decisions, tmp_path / "pseudo", tmp_path / "next")
    case = discover_cases(out, FLARE22)[0]
    assert case.annotated_class_ids == (1, 2)


def test_output_folder_rules(pseudo, tmp_path):
    with pytest.warns(InputWarning):
        decisions = select_cases(score_pseudo_folder(pseudo), FilterConfig(threshold=0.5))
    out = write_accepted_dataset(decisions, pseudo, tmp_path / "out")
    with pytest.raises(InputError, match="exists"):
        write_accepted_dataset(decisions, pseudo, out)
    (out / "stale.txt").write_text("old")
    write_accepted_dataset(decisions, pseudo, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "scores.csv").is_file()
    assert not list(tmp_path.glob(".out.*"))                      # no temp folders left
    with pytest.raises(InputError, match="overlaps the input"):
        write_accepted_dataset(decisions, pseudo, pseudo / "inside", overwrite=True)


# ---------------------------------------------------------------- CLI
def test_cli_end_to_end(pseudo, tmp_path, capsys):
    out = tmp_path / "ds"
    with pytest.warns(InputWarning):
        code = main([str(pseudo), str(out), "--threshold", "0.95", "--per-organ"])
    assert code == 0
    text = capsys.readouterr().out
    assert "cases scored    3" in text and "1 whole volumes, 1 partial" in text
    assert "max 1.0000" in text
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["good.nii.gz", "mixed.nii.gz"]
    with pytest.warns(InputWarning):
        code = main([str(pseudo), str(tmp_path / "ds2"), "--top-fraction", "0.5",
                     "--variant", "paper_iou_majority"])
    assert code == 0 and "paper_iou_majority" in capsys.readouterr().out


def test_cli_bad_input(pseudo, tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path / "o"), "--threshold", "0.9"]) == 2
    assert "pseudo-label folder not found" in capsys.readouterr().err
    assert main([str(pseudo), str(tmp_path / "o")]) == 2
    assert "neither of threshold and top_fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(pseudo), str(tmp_path / "o"), "--threshold", "0.9", "--top-fraction", "0.5"])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    (pseudo / "good" / "case.json").write_text('{"case_id": "good"}')
    with pytest.warns(InputWarning):
        assert main([str(pseudo), str(tmp_path / "o"), "--threshold", "0.9"]) == 2
    assert "lacks ['image', 'schema']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.real
def test_dicom_folder_image_is_linked(tmp_path):
    dicom = real_case("ct3slice") / "dicom"
    pytest.importorskip("pydicom")
    volume = load_volume(dicom)
    liver = (load_labels(real_case("ct3slice") / "label_flare.nii.gz")[0] == 1).astype(np.uint8)
    assert liver.shape == volume.hu.shape
    pseudo = tmp_path / "pseudo"
    write_pseudo_case(pseudo, "ct3", dicom, np.stack([liver, liver]))
    decisions = select_cases(score_pseudo_folder(pseudo), FilterConfig(threshold=0.9))
    out = write_accepted_dataset(decisions, pseudo, tmp_path / "ds")
    (case,) = discover_cases(out, FLARE22)
    assert case.image_path == out / "imagesTr" / "ct3" and case.image_path.is_symlink()
    labels, _ = load_labels(case.label_path, reference=load_volume(case.image_path))
    assert np.array_equal(labels, liver)
