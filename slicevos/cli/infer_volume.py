"""slicevos-infer: segment whole CT volumes (NIfTI file, DICOM series folder, or a folder of
them): key slices (drawn, or found by a reference checkpoint) are propagated through the
volume by an engine: optical flow (no checkpoint, the default), the STCN (a propagation
checkpoint) or both fused.

Automatic:       slicevos-infer ct.nii.gz out.nii.gz --reference ref.pt
Semi-automatic:  slicevos-infer ct.nii.gz out.nii.gz --keys drawn.nii.gz --schema flare22
                 (drawn slices = keys; or --key-slices 10,40,80 with a fully drawn file;
                 the key_slices list of drawn.json when there is one, as slicevos-label
                 saves it; --empty-slices 3,97 adds looked-at slices with no organ)
Engines:         --propagator flow (default) | stcn | fused; stcn and fused need
                 --propagation prop.pt (given alone, --propagation means stcn)
Batch:           slicevos-infer images/ outputs/ ...  (reruns skip finished cases)
Demo:            slicevos-infer --demo [OUT_DIR]  (phantom + the shipped demo models)

The output label file has the input's own geometry, with a <name>.json label map beside it;
--preview adds <name>_preview.png, --report <name>_report.json, --uncertainty-map
<name>_uncertainty.nii.gz. For a DICOM series input a DICOM-SEG <name>_seg.dcm (for PACS,
OHIF, 3D Slicer) is written too when highdicom is installed (pip install "slicevos[dicomseg]";
without it a warning); --dicom-seg makes it required, --no-dicom-seg skips it. See
docs/interoperability.md. The label file is written last.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from slicevos.cli.common import PROPAGATORS, run_cli
from slicevos.config import load_config
from slicevos.errors import InputError

log = logging.getLogger("slicevos.infer")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "inference" / "default.yaml"


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "CUDA was asked for but torch sees no GPU",
                         "use --device cpu, or install the CUDA build of torch for your driver")
    return name


def inference_config(args: argparse.Namespace):
    from slicevos.inference.config import InferenceConfig

    assignments = list(args.set)
    for name in ("tta", "amp", "propagator", "backend"):
        if getattr(args, name, None):
            assignments.append(f"{name}={getattr(args, name)}")
    if args.no_postprocess:
        assignments.append("component_rules=false")
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is None:
        from slicevos.config import apply_overrides, config_to_dict, from_dict

        return from_dict(InferenceConfig, apply_overrides(config_to_dict(InferenceConfig()),
                                                          assignments), "--set")
    return load_config(path, InferenceConfig, assignments=assignments)


def _body(args: argparse.Namespace) -> int:
    from slicevos.cli.infer_cases import OutputOptions, find_cases, run_case
    from slicevos.inference.pipeline import VolumePipeline
    from slicevos.inference.user_keys import parse_slice_list
    from slicevos.io.labels import get_schema

    if args.demo:
        from slicevos.cli.infer_demo import prepare_demo

        args = prepare_demo(args)
    if args.input is None or args.output is None:
        raise InputError(None, "INPUT and OUTPUT are needed", "pass both, or use --demo")
    if args.propagation and not args.propagator:
        from slicevos.inference.engines import checkpoint_engine
        args.propagator = checkpoint_engine(args.propagation)
    for option, value in (("--key-slices", args.key_slices),
                          ("--empty-slices", args.empty_slices)):
        if value and not args.keys:
            raise InputError(option, "slice indices need a key label file",
                             "pass --keys LABELS.nii.gz too")
    key_slices = parse_slice_list(args.key_slices) if args.key_slices else None
    empty_slices = (parse_slice_list(args.empty_slices, "--empty-slices")
                    if args.empty_slices else ())
    config = inference_config(args)
    if config.propagator == "flow" and args.propagation:
        raise InputError(args.propagation, "the flow engine takes no propagation checkpoint",
                         "drop --propagation, or pass --propagator stcn, guided or fused")
    device = resolve_device(args.device)
    pipeline = VolumePipeline.from_checkpoints(
        args.propagation, args.reference if not args.keys else None, args.localizer, config,
        device, get_schema(args.schema) if args.schema else None, args.uncertainty_map)
    cases = find_cases(Path(args.input), Path(args.output),
                       Path(args.keys) if args.keys else None)
    options = OutputOptions(args.preview, args.report, args.uncertainty_map,
                            progress=not args.quiet, dicom_seg=args.dicom_seg)
    checkpoints = {k: str(v) for k, v in (("reference", args.reference),
                                          ("propagation", args.propagation),
                                          ("localizer", args.localizer)) if v}
    failed = 0
    for case in cases:
        if case.output.exists() and not args.overwrite:
            log.info("%s: %s exists, skipped (--overwrite to redo)", case.case_id, case.output)
            continue
        try:
            report = run_case(case, pipeline, options, key_slices, checkpoints, empty_slices)
        except InputError as err:
            if len(cases) == 1:
                raise
            failed += 1
            log.error("%s: %s", case.case_id, err)
            continue
        organs = ", ".join(f"{name} {stats['volume_ml']:.0f} mL"
                           for name, stats in report.organs.items())
        log.info("%s -> %s (%.1f s; keys %s; %s)", case.case_id, case.output,
                 sum(report.timing_s.values()), report.key_slices, organs or "no organ")
    if args.demo:
        from slicevos.cli.infer_demo import demo_accuracy

        log.info(demo_accuracy(args))
    if failed:
        log.error("%d of %d cases failed", failed, len(cases))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slicevos-infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="NIfTI file, DICOM series folder, or a folder "
                        "of them (batch)")
    parser.add_argument("output", nargs="?", help="label file (.nii.gz) or output folder")
    parser.add_argument("--reference", help="reference checkpoint (slicevos-train-reference)")
    parser.add_argument("--propagation", help="propagation checkpoint "
                        "(slicevos-train-propagation), for --propagator stcn, guided or fused")
    parser.add_argument("--propagator", choices=PROPAGATORS,
                        help="propagation engine (default: the config's, flow; when only "
                        "--propagation is given, stcn, or guided for a flow-guided checkpoint)")
    parser.add_argument("--localizer", help="optional localizer checkpoint "
                        "(slicevos-train-localizer): only the abdomen z-range is segmented")
    parser.add_argument("--keys", help="semi-automatic: label file whose drawn slices are the "
                        "keys (or a folder of <case>.nii.gz in batch mode)")
    parser.add_argument("--key-slices", help="with a fully drawn --keys file: the slices to use "
                        "as keys, e.g. 10,40,80 (the file's own slice indices)")
    parser.add_argument("--empty-slices", help="with --keys: slices a person looked at and "
                        "found no organ on, e.g. 3,97 (the file's own slice indices); they are "
                        "keys with nothing drawn and end the organs there")
    parser.add_argument("--schema", help="label schema when no reference checkpoint gives one "
                        "(flare22, flare23, objects)")
    parser.add_argument("--config", help="inference options YAML (default "
                        "configs/inference/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an inference option, e.g. --set key_stride=4")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast on CUDA")
    parser.add_argument("--backend", choices=("auto", "torch", "onnx"),
                        help="run the reference pair with PyTorch or onnxruntime (CPU; a .pt "
                        "checkpoint is exported once to ~/.cache/slicevos/onnx; a --reference "
                        ".onnx file from slicevos-export always uses onnxruntime); default "
                        "auto: onnx on the CPU when the onnx extra is installed")
    parser.add_argument("--tta", choices=("none", "flip_lr", "flip_lr_ud"),
                        help="flip TTA of the reference stage")
    parser.add_argument("--no-postprocess", "--no-lcc", action="store_true",
                        dest="no_postprocess",
                        help="keep every connected component (default: one-piece organs lose "
                        "their stray parts; tumors, vessels and drawn parts are always kept)")
    parser.add_argument("--preview", action="store_true", help="write overlay PNG mosaics")
    parser.add_argument("--report", action="store_true", help="write the per-case JSON report")
    parser.add_argument("--uncertainty-map", action="store_true",
                        help="write where the two propagation directions disagree (NIfTI)")
    parser.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=None,
                        help="write a DICOM-SEG <name>_seg.dcm over the input DICOM series "
                        "(default: for DICOM input when highdicom is installed); --dicom-seg "
                        "fails on NIfTI input or without highdicom")
    parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--demo", action="store_true", help="make a phantom and segment it with "
                        "the demo models; OUTPUT (or INPUT) is the demo folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
