"""slicevos-export: a checkpoint's networks as ONNX graphs, each checked against PyTorch.

    slicevos-export ref.pt ref.onnx                     # the reference pair (two logits outputs)
    slicevos-export ref.pt ref_sum.onnx --part sum      # the summed pair (probabilities)
    slicevos-export ref.pt ref.onnx --quantize int8     # also ref.int8.onnx (dynamic int8)
    slicevos-export loc.pt loc.onnx                     # the localizer
    slicevos-export prop.pt stcn.onnx                   # stcn_key_encoder/_value_encoder/_decoder.onnx

Opset 18; batch, slice size and object count are dynamic (slice sizes must be multiples of
the network's stride, given in the file's metadata), and the slice-position input is kept.
The metadata also carry the schema and CT windows, so ``slicevos-infer --reference
ref.onnx`` runs the graph with onnxruntime without the checkpoint.

Every graph is checked on slices of a phantom and of each ``--check-volume`` (NIfTI file or
DICOM folder): the largest absolute difference from PyTorch and the share of pixels whose
argmax agrees. An agreement under ``--min-agreement`` (default 99.9%) is an error (exit 1).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from slicevos.cli.common import run_cli
from slicevos.errors import InputError

log = logging.getLogger("slicevos.export")


def _outputs(out: Path, specs: list) -> list[Path]:
    if out.suffix != ".onnx":
        raise InputError(out, "the output name must end in .onnx", "e.g. reference.onnx")
    if len(specs) == 1:
        return [out]
    stem = out.stem
    return [out.with_name(f"{stem}_{spec.metadata['part']}.onnx") for spec in specs]


def _check_volumes(paths: Sequence[str]) -> list[tuple[str, object]]:
    from slicevos.io.loader import load_volume
    from slicevos.phantom import PhantomConfig, make_phantom

    volumes = [("phantom", make_phantom(0, PhantomConfig(shape=(24, 160, 144))).hu)]
    for path in paths:
        path = Path(path).resolve()
        volumes.append((f"{path.parent.name}/{path.name}", load_volume(path).hu))
    return volumes


def _table(checks: list) -> str:
    lines = [f"{'graph':<22}{'slices from':<40}{'n':>4}{'max |diff|':>12}{'agreement':>11}"]
    for c in checks:
        agreement = "-" if c.agreement is None else f"{100 * c.agreement:.3f}%"
        lines.append(f"{c.graph:<22}{c.source[-39:]:<40}{c.samples:>4}{c.max_abs_diff:>12.2e}"
                     f"{agreement:>11}")
    return "\n".join(lines)


def _body(args: argparse.Namespace) -> int:
    from slicevos.inference.onnx.export import GraphCheck, check_graph, export_graph, quantize_int8
    from slicevos.inference.onnx.graphs import GRAPH_BUILDERS, checkpoint_kind
    from slicevos.inference.onnx.runtime import windows_of
    from slicevos.inference.onnx.samples import graph_inputs

    kind = checkpoint_kind(args.checkpoint)
    options = {"part": args.part} if kind == "reference" else {}
    specs = GRAPH_BUILDERS[kind](args.checkpoint, **options)
    volumes = [] if args.no_check else _check_volumes(args.check_volume)
    checks: list[GraphCheck] = []
    for spec, path in zip(specs, _outputs(Path(args.output), specs), strict=True):
        export_graph(spec, path, args.opset)
        written = [path]
        if args.quantize == "int8":
            written.append(quantize_int8(path, path.with_suffix(".int8.onnx")))
        for graph in written:
            log.info("wrote %s (%.1f MB)", graph, graph.stat().st_size / 1e6)
            windows = windows_of(spec.metadata, graph)
            for source, hu in volumes:
                check = check_graph(spec, graph, graph_inputs(spec, hu, windows,
                                                              args.check_slices),
                                    source, args.threads)
                checks.append(check if graph == path else
                              replace(check, graph=f"{spec.name} int8"))
    if checks:
        print(_table(checks))
    failed = [c for c in checks if not c.passed(args.min_agreement)]
    if failed:
        raise InputError(args.output, f"{len(failed)} check(s) agree with PyTorch on fewer "
                         f"than {100 * args.min_agreement:.1f}% of pixels",
                         "see the table; do not use those graphs (or lower --min-agreement "
                         "for an int8 graph you have measured)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slicevos-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="reference, localizer or propagation checkpoint")
    parser.add_argument("output", help="OUT.onnx (propagation: OUT_<part>.onnx per graph)")
    parser.add_argument("--part", default="pair", choices=("pair", "sum", "net_a", "net_b"),
                        help="reference: both networks' logits (pair), their summed softmax "
                        "(sum), or one network")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="int8: also write OUT.int8.onnx (onnxruntime dynamic quantisation)")
    parser.add_argument("--check-volume", action="append", default=[], metavar="CT",
                        help="also check on slices of this scan (NIfTI or DICOM folder)")
    parser.add_argument("--check-slices", type=int, default=4, help="slices per volume")
    parser.add_argument("--min-agreement", type=float, default=0.999)
    parser.add_argument("--no-check", action="store_true", help="skip the comparison")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
