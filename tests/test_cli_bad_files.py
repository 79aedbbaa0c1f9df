"""Every console script that reads files answers malformed ones with one line on stderr: no
traceback, a non-zero exit code, the input named, and no output (or temporary file) left
behind. An unexpected exception goes through the same path and points to ``--debug``."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_bad_input import ZERO_SFORM, raw_nifti  # tests/ is on sys.path (rootdir-less tests)

from slicevos.cli.common import DEBUG_ENV, run_cli

ROOT = Path(__file__).resolve().parents[1]
DEMO_REFERENCE = ROOT / "checkpoints" / "demo_reference.pt"
DEMO_PROPAGATION = ROOT / "checkpoints" / "demo_propagation.pt"
MAPPING = ROOT / "configs" / "labels" / "totalseg_v2_to_flare.yaml"


def write_bad(folder: Path, kind: str) -> Path:
    """One malformed input file of ``kind`` (64x64 slices: tiny): ``bad.pt`` for the checkpoint
    kinds, else ``bad.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("bad.pt" if kind.endswith("checkpoint") else "bad.nii.gz")
    ct = np.full((64, 64, 4), -500, np.int16)
    if kind == "truncated":
        whole = raw_nifti(path, ct).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "text":
        path.write_text("patient CT, exported as text by mistake\n" * 20)
    elif kind in ("zero_affine", "zero_affine_labels"):  # neither sform nor qform usable
        data = ct if kind == "zero_affine" else np.zeros(ct.shape, np.uint8)
        raw_nifti(path, data, srow=ZERO_SFORM, zero_pixdim=True)
    elif kind in ("empty", "empty_checkpoint"):
        path.write_bytes(b"")
    elif kind == "not_checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "junk_checkpoint":
        path.write_bytes(b"PK\x03\x04 not a zip archive" * 10)
    else:
        raise ValueError(kind)
    return path


NIFTI_KINDS = ("truncated", "text", "zero_affine", "empty")
LABEL_KINDS = ("truncated", "text", "zero_affine_labels", "empty")
CHECKPOINT_KINDS = ("not_checkpoint", "junk_checkpoint", "empty_checkpoint")
# what the one-line error says, per kind of file (the rest of the line names file and fix)
EXPECTED = {"truncated": "NIfTI", "text": "", "zero_affine": "unusable affine",
            "zero_affine_labels": "unusable affine", "empty": "",
            "not_checkpoint": "not a slicevos checkpoint", "junk_checkpoint": "checkpoint",
            "empty_checkpoint": "checkpoint"}


def label_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.zeros((64, 64, 4), np.uint8)
    labels[20:40, 20:40, 1:3] = 1
    img = nib.Nifti1Image(labels, np.diag([0.8, 0.8, 2.5, 1.0]))
    nib.save(img, folder / "case.nii.gz")
    return folder / "case.nii.gz"


# (tool module, kinds of bad file, argv builder: (tmp, bad file) -> argv, output to check)
Case = tuple[str, tuple[str, ...], Callable[[Path, Path], list[str]]]


def _infer_image(tmp: Path, bad: Path) -> list[str]:
    return [str(bad), str(tmp / "out" / "seg.nii.gz"), "--reference", str(DEMO_REFERENCE),
            "--propagation", str(DEMO_PROPAGATION), "--quiet", "--report"]


def _infer_checkpoint(option: str) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, bad: Path) -> list[str]:
        image = raw_nifti(tmp / "ct.nii.gz", np.full((64, 64, 4), -500, np.int16))
        given = {"--reference": str(DEMO_REFERENCE), "--propagation": str(DEMO_PROPAGATION),
                 option: str(bad)}
        return [str(image), str(tmp / "out" / "seg.nii.gz"), "--quiet",
                *[part for item in given.items() for part in item]]
    return argv


def _infer_keys(tmp: Path, bad: Path) -> list[str]:
    image = raw_nifti(tmp / "ct.nii.gz", np.full((64, 64, 4), -500, np.int16))
    return [str(image), str(tmp / "out" / "seg.nii.gz"), "--propagation", str(DEMO_PROPAGATION),
            "--keys", str(bad), "--schema", "flare22", "--quiet"]


def _in_dataset(tmp: Path, bad: Path) -> Path:
    dataset = tmp / "ds"
    (dataset / "imagesTr").mkdir(parents=True)
    bad.rename(dataset / "imagesTr" / "case_0000.nii.gz")
    return dataset


def _training(config_role: str) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, bad: Path) -> list[str]:  # a config that is not YAML
        config = bad.with_name("config.yaml")
        bad.rename(config)
        return ["--config", str(config), "--cache", str(tmp / "absent"), "--out", str(tmp / "out")]
    return argv


def _cache_with_bad_index(tool_config: str) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, bad: Path) -> list[str]:
        from slicevos.data.cache import INDEX_FILE

        cache = tmp / "cache"
        cache.mkdir()
        bad.rename(cache / INDEX_FILE)
        return ["--config", str(ROOT / "configs" / tool_config / "tiny.yaml"), "--cache",
                str(cache), "--out", str(tmp / "out"), "--iterations", "1"]
    return argv


def _pseudo_dir(tmp: Path, bad: Path) -> Path:
    """A pseudo-label folder whose one case record is ``bad``."""
    case = tmp / "pseudo" / "case_a"
    case.mkdir(parents=True)
    if bad.exists():
        bad.with_name("case.json").write_bytes(bad.read_bytes())
        bad.with_name("case.json").rename(case / "case.json")
    return tmp / "pseudo"


def _yaml_config(*before: str) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, bad: Path) -> list[str]:
        config = bad.with_name("config.yaml")
        bad.rename(config)
        return [*before, "--config", str(config)]
    return argv


CASES: dict[str, Case] = {
    "infer-image": ("infer_volume", NIFTI_KINDS, _infer_image),
    "infer-reference": ("infer_volume", CHECKPOINT_KINDS, _infer_checkpoint("--reference")),
    "infer-propagation": ("infer_volume", CHECKPOINT_KINDS, _infer_checkpoint("--propagation")),
    "infer-keys": ("infer_volume", ("truncated", "zero_affine_labels"), _infer_keys),
    "evaluate-pred": ("evaluate", LABEL_KINDS,
                      lambda tmp, bad: [str(bad), str(label_file(tmp / "gt")), "--quiet",
                                        "--out", str(tmp / "out")]),
    "convert-labels": ("convert_labels", LABEL_KINDS,
                       lambda tmp, bad: [str(bad), str(tmp / "out" / "x.nii.gz"),
                                         "--mapping", str(MAPPING)]),
    "prepare-data": ("prepare_data", ("truncated", "zero_affine"),
                     lambda tmp, bad: [str(_in_dataset(tmp, bad)), str(tmp / "out")]),
    "benchmark-io": ("benchmark_io", ("truncated", "text", "empty"),
                     lambda tmp, bad: ["--data", str(bad.rename(bad.with_name("ct.nii.gz")).parent.parent),
                                       "--phantom-size", "0", "--repeats", "1"]),
    "train-reference-config": ("train_reference", ("text",), _training("reference")),
    "train-reference-cache": ("train_reference", ("text", "empty"), _cache_with_bad_index("reference")),
    "train-propagation-cache": ("train_propagation", ("text",), _cache_with_bad_index("propagation")),
    "train-localizer-cache": ("train_localizer", ("text",), _cache_with_bad_index("localizer")),
    "generate-pseudo-image": ("generate_pseudo_labels", ("truncated", "zero_affine"),
                              lambda tmp, bad: [str(bad), "--checkpoints", str(DEMO_REFERENCE),
                                                "--tta", "flip_lr", "--out", str(tmp / "out"),
                                                "--no-progress"]),
    "generate-pseudo-checkpoint": ("generate_pseudo_labels", ("not_checkpoint", "junk_checkpoint"),
                                   lambda tmp, bad: [str(write_bad(tmp / "ok", "truncated")),
                                                     "--checkpoints", str(bad), "--tta",
                                                     "flip_lr", "--out", str(tmp / "out"),
                                                     "--no-progress"]),
    "filter-pseudo": ("filter_pseudo_labels", ("text", "empty"),
                      lambda tmp, bad: [str(_pseudo_dir(tmp, bad)), str(tmp / "out"),
                                        "--threshold", "0.5"]),
    "benchmark-pseudo": ("benchmark_pseudo", ("text", "empty"),
                         lambda tmp, bad: [str(_pseudo_dir(tmp, bad)), "--phantoms",
                                           str(bad.rename(tmp / "dataset.json").parent)]),
    "run-rounds": ("run_rounds", ("text", "empty"), _yaml_config("--out", "unused_out")),
    "make-phantoms": ("make_phantoms", ("text",), _yaml_config("unused_out")),
    "benchmark-propagation": ("benchmark_propagation", ("not_checkpoint", "junk_checkpoint"),
                              lambda tmp, bad: ["--parts", "quality", "--data", "phantom",
                                                "--phantom-cases", "1", "--phantom-shape", "8",
                                                "48", "48", "--checkpoint", str(bad)]),
}
PARAMS = [pytest.param(name, kind, id=f"{name}-{kind}") for name, (_, kinds, _) in CASES.items()
          for kind in kinds]


def left_behind(tmp: Path, inputs: set[Path]) -> list[Path]:
    """Files under ``tmp`` that the tool wrote (outputs, temporary files)."""
    return sorted(p for p in tmp.rglob("*") if p.is_file() and p not in inputs)


@pytest.mark.parametrize(("name", "kind"), PARAMS)
def test_malformed_file_gives_one_line_error(name, kind, tmp_path, capfd, monkeypatch):
    module, _, build = CASES[name]
    monkeypatch.chdir(tmp_path)  # relative outputs ("unused_out") land in tmp_path
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    bad = write_bad(tmp_path / "in" / "case", kind)
    argv = build(tmp_path, bad)
    inputs = {p for p in tmp_path.rglob("*") if p.is_file()}
    code = importlib.import_module(f"slicevos.cli.{module}").main(argv)
    err = capfd.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert str(tmp_path) in errors[0], errors[0]  # the input is named
    if ": unexpected " in errors[0]:  # no curated message: the generic one of run_cli
        assert "--debug" in errors[0] and f"{DEBUG_ENV}=1" in errors[0]
    else:
        assert EXPECTED[kind].lower() in errors[0].lower()
    assert left_behind(tmp_path, inputs) == [], errors[0]


def test_zero_affine_via_the_console_entry_point(tmp_path):
    """The issue's case end to end, as a user runs it: a fresh process, no traceback."""
    bad = write_bad(tmp_path, "zero_affine")
    out = subprocess.run(
        [sys.executable, "-m", "slicevos.cli.infer_volume", *_infer_image(tmp_path, bad)],
        capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"{bad}: unusable affine: the sform (sform_code 1)" in out.stderr
    assert not (tmp_path / "out" / "seg.nii.gz").exists()


def _crash(args: argparse.Namespace) -> int:
    raise RuntimeError(f"cannot decode {args.image}\nsecond line")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    parser.add_argument("image")
    parser.add_argument("--out")
    return parser


def test_unexpected_error_is_one_line_naming_the_input_and_debug(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    image = tmp_path / "ct.nii.gz"
    image.write_bytes(b"x")
    assert run_cli(_crash, _parser(), [str(image), "--out", str(tmp_path)]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {image}: unexpected RuntimeError: cannot decode {image}. Fix:")
    assert "--debug" in err and f"{DEBUG_ENV}=1" in err and "second line" not in err
    # the file named in an OSError wins over the command's inputs
    def missing(args: argparse.Namespace) -> int:
        raise FileNotFoundError(2, "No such file", str(tmp_path / "inner.bin"))
    assert run_cli(missing, _parser(), [str(image)]) == 1
    assert capfd.readouterr().err.startswith(f"error: {tmp_path / 'inner.bin'}: unexpected")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_full_traceback(how, tmp_path, monkeypatch):
    image = tmp_path / "ct.nii.gz"
    image.write_bytes(b"x")
    argv = [str(image)]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="cannot decode"):
        run_cli(_crash, _parser(), argv)
