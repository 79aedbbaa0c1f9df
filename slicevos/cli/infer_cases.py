"""The per-case work of ``slicevos-infer``: find the cases of an input, run the pipeline on one
case and write its outputs (labels last, so an existing label file means a finished case)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from slicevos.errors import InputError
from slicevos.inference.pipeline import PipelineResult, VolumePipeline
from slicevos.inference.reporting.preview import render_preview
from slicevos.inference.reporting.report import (
    CaseReport,
    StageTimer,
    memory_summary,
    organ_statistics,
    save_uncertainty_map,
    write_report,
)
from slicevos.inference.user_keys import read_key_slices
from slicevos.io.dicom_seg import SegSource, dicom_seg_path, save_dicom_seg, seg_source_for
from slicevos.io.loader import load_volume
from slicevos.io.nifti import is_nifti, save_labels, strip_nifti_suffix
from slicevos.metrics.efficiency import EfficiencyMeter

log = logging.getLogger("slicevos.infer")
_CHANNEL = re.compile(r"_0000$")
_written = {"cases": 0}  # label files written by this process (for the test hook)


def _test_exit_hook() -> None:
    """Test hook: ``SLICEVOS_TEST_EXIT_AFTER=N`` kills the process (exit code 3) after N
    finished cases, in the middle of the next one (its preview/report written, its labels
    not), to test that a rerun redoes exactly the unfinished cases."""
    limit = os.environ.get("SLICEVOS_TEST_EXIT_AFTER")
    if limit is not None and _written["cases"] >= int(limit):
        os._exit(3)


@dataclass(frozen=True)
class Case:
    """One input: ``image`` (NIfTI file or DICOM folder), ``output`` label file, and the key
    file for semi-automatic mode."""

    case_id: str
    image: Path
    output: Path
    keys: Path | None = None

    def sibling(self, suffix: str) -> Path:
        """``<output stem><suffix>`` beside the label file (e.g. ``_report.json``)."""
        return self.output.with_name(strip_nifti_suffix(self.output.name) + suffix)


@dataclass(frozen=True)
class OutputOptions:
    """What to write beside the label file. ``dicom_seg``: a DICOM-SEG ``<name>_seg.dcm``;
    None writes one for a DICOM series input when it can (``seg_source_for``)."""

    preview: bool = False
    report: bool = False
    uncertainty_map: bool = False
    progress: bool = True
    dicom_seg: bool | None = None


def case_id_of(path: Path) -> str:
    """``case_0001_0000.nii.gz`` -> ``case_0001``; a DICOM folder -> its name."""
    name = path.name if path.is_dir() else strip_nifti_suffix(path.name)
    return _CHANNEL.sub("", name)


def _is_image(path: Path) -> bool:
    return not path.name.startswith(".") and (path.is_dir() or is_nifti(path))


def is_batch_folder(folder: Path) -> bool:
    """A folder of cases holds NIfTI files, or only sub-folders (one DICOM series each); any
    other folder is taken as one DICOM series."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    files = [p for p in entries if p.is_file()]
    return any(is_nifti(p) for p in files) or (not files and any(p.is_dir() for p in entries))


def find_cases(source: Path, output: Path, keys: Path | None) -> list[Case]:
    """Cases of ``source``: one NIfTI file / DICOM series folder, or a folder of them (batch
    mode: a folder holding NIfTI files, or only sub-folders = one DICOM series each).
    ``output`` is the label file (single input, name ending in .nii/.nii.gz) or a folder.
    ``keys`` is a key file (single input) or a folder with ``<case_id>.nii.gz`` per case."""
    if not source.exists():
        raise InputError(source, "input not found", "pass a NIfTI file, a DICOM series folder "
                         "or a folder of them")
    batch = source.is_dir() and is_batch_folder(source)
    images = sorted(p for p in source.iterdir() if _is_image(p)) if batch else [source]
    if batch and is_nifti(output):
        raise InputError(output, "batch input needs an output folder, not a file name",
                         "pass a folder as OUTPUT")
    if keys is not None and not keys.exists():
        raise InputError(keys, "key file or folder not found", "check the --keys path")
    cases = []
    for image in images:
        case_id = case_id_of(image)
        out = output if is_nifti(output) else output / f"{case_id}.nii.gz"
        key = keys
        if keys is not None and keys.is_dir():
            key = next((keys / f"{case_id}{s}" for s in (".nii.gz", ".nii")
                        if (keys / f"{case_id}{s}").exists()), None)
            if key is None:
                raise InputError(keys, f"no key file {case_id}.nii.gz for input {image.name}",
                                 "name each key file after its case")
        cases.append(Case(case_id, image, out, key))
    if not cases:
        raise InputError(source, "folder holds no NIfTI file or DICOM series",
                         "pass a NIfTI file, a DICOM series folder or a folder of them")
    return cases


def run_case(case: Case, pipeline: VolumePipeline, options: OutputOptions,
             key_slices: list[int] | None = None, checkpoints: dict[str, str] | None = None,
             empty_slices: Sequence[int] = ()) -> CaseReport:
    """Segment one case and write its outputs; the label file is written last.
    ``key_slices`` / ``empty_slices``: file slice indices (``slicevos.inference.user_keys``)."""
    timer = StageTimer(pipeline.device)
    with EfficiencyMeter(device=pipeline.device if pipeline.device.type == "cuda" else None
                         ) as meter:
        with timer("load"):
            volume = load_volume(case.image)
            seg_source = seg_source_for(volume, options.dicom_seg)
            keys = (read_key_slices(case.keys, volume, pipeline.schema, key_slices,
                                    empty_slices) if case.keys is not None else None)
        result = pipeline.run(volume, keys, timer, options.progress)
    report = CaseReport(
        input_path=str(case.image), output_path=str(case.output), shape=volume.shape,
        spacing_mm=volume.spacing, schema=pipeline.schema.name,
        mode="automatic" if result.key_source == "reference" else "semi-automatic",
        key_slices=result.key_slices, key_source=result.key_source,
        processed_z_range=(result.z_range[0], result.z_range[1] - 1),
        timing_s=dict(timer.seconds), memory_mb=memory_summary(meter),
        organs=organ_statistics(result.labels, volume.spacing, pipeline.schema),
        checkpoints=checkpoints or {}, config=asdict(pipeline.config))
    report.set_uncertainty(result.slice_uncertainty, ranked=result.slices_to_check)
    _write_outputs(case, volume, result, report, pipeline, options, seg_source)
    return report


def _write_outputs(case: Case, volume, result: PipelineResult, report: CaseReport,
                   pipeline: VolumePipeline, options: OutputOptions,
                   seg_source: SegSource | None = None) -> None:
    case.output.parent.mkdir(parents=True, exist_ok=True)
    if options.preview:
        render_preview(volume.hu, result.labels, volume.spacing, pipeline.schema,
                       case.sibling("_preview.png"), uncertainty=result.slice_uncertainty)
    if options.uncertainty_map and result.uncertainty_map is not None:
        save_uncertainty_map(case.sibling("_uncertainty.nii.gz"), result.uncertainty_map,
                             volume.geometry)
    if options.report:
        write_report(case.sibling("_report.json"), report)
    if seg_source is not None:
        _write_dicom_seg(case, result, pipeline, seg_source)
    _test_exit_hook()
    save_labels(result.labels, volume.geometry, case.output, pipeline.schema,
                key_slices=result.key_slices)
    _written["cases"] += 1


def _write_dicom_seg(case: Case, result: PipelineResult, pipeline: VolumePipeline,
                     seg_source: SegSource) -> None:
    path = save_dicom_seg(result.labels, seg_source, dicom_seg_path(case.output), pipeline.schema,
                          algorithm_type=("AUTOMATIC" if result.key_source == "reference"
                                          else "SEMIAUTOMATIC"))
    if path is None:
        log.info("%s: no organ segmented, so no DICOM-SEG", case.case_id)
