"""slicevos-generate-pseudo-labels: predict every unlabeled volume with several reference
checkpoints (each as the CPS pair or as its two networks, and TTA flips as extra members);
store each member's labels (uint8), the fused pseudo-label and the consensus score per case.
Reruns skip finished cases.

Sharding: ``torchrun --nproc_per_node=N tools/generate_pseudo_labels.py ...`` (each rank takes
every N-th case and, on CUDA, its own GPU), or separate processes with --rank/--world-size."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from slicevos.cli.common import run_cli
from slicevos.pseudo.consensus import DEFAULT_VARIANT, VARIANTS

# = slicevos.inference.reference.ensemble.TTA_CHOICES (not imported here: that loads torch)
TTA_CHOICES = ("flip_lr", "flip_ud", "pos_shift_up", "pos_shift_down", "pos_none")
# the pair under two shifted position readings: the best worst pool of the consensus benchmark
# (docs/pseudo_labels.md, "Position TTA members")
DEFAULT_TTA = ("pos_shift_up", "pos_shift_down")


def _body(args: argparse.Namespace) -> int:
    from slicevos.inference.reference.ensemble import predict_members, reference_members
    from slicevos.pseudo.generation import cases_from_inputs, generate_pseudo_labels
    from slicevos.training.distributed import (
        gather_objects,
        init_distributed,
        resolve_device,
        shutdown_distributed,
    )

    if args.rank is not None or args.world_size is not None:
        rank, world, info = args.rank or 0, args.world_size or 1, None
        device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    else:
        info = init_distributed(args.device)
        rank, world, device = info.rank, info.world_size, info.device
    try:
        members = reference_members(args.checkpoints, args.tta, device, args.batch_size,
                                    networks=args.networks)
        schema = members[0].segmenter.info.schema
        cases = cases_from_inputs(args.inputs, schema)
        summary = generate_pseudo_labels(
            cases, lambda volume: predict_members(volume, members),
            [m.identity() for m in members], args.out, schema, args.variant, rank, world,
            progress=not args.no_progress)
        print(f"rank {rank}/{world}: {len(summary.written)} written, {len(summary.skipped)} "
              f"already done, {summary.seconds:.1f} s")
        summaries = gather_objects(summary, info) if info is not None else [summary]
    finally:
        shutdown_distributed()
    if rank == 0 and len(summaries) > 1:
        total = sum(len(s.written) + len(s.skipped) for s in summaries)
        print(f"all ranks: {total} of {len(cases)} cases done in {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-generate-pseudo-labels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="dataset folder (its unlabeled/ cases), NIfTI "
                        "files, folders of NIfTI files, or DICOM series folders")
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="reference checkpoints (last.pt / best.pt of slicevos-train-reference)")
    parser.add_argument("--out", required=True, help="pseudo-label folder (created; reruns resume)")
    parser.add_argument("--networks", nargs="+", default=["pair"], choices=("pair", "a", "b"),
                        help="members per checkpoint: the CPS pair (default), and/or its networks "
                        "a (TransUNet) and b (DeepLabV3+) alone, e.g. --networks a b")
    parser.add_argument("--tta", nargs="*", default=list(DEFAULT_TTA), choices=TTA_CHOICES,
                        help="TTA run as extra members <member>+<tta> of every checkpoint and "
                        "network: flips (only for networks trained with mirroring) and slice "
                        "position transforms pos_shift_up / pos_shift_down / pos_none (p' = "
                        "offset + scale * z/(D-1), ensemble.POSITION_TTA). Default: "
                        f"{' '.join(DEFAULT_TTA)} (skipped for networks without a slice "
                        "position input); --tta with no name: none")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=VARIANTS,
                        help=f"consensus score stored in case.json (default {DEFAULT_VARIANT}; "
                        "slicevos-filter-pseudo-labels rescores for another variant)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    parser.add_argument("--rank", type=int, help="this process's shard (default: torchrun RANK or 0)")
    parser.add_argument("--world-size", type=int, help="number of shards (default: torchrun "
                        "WORLD_SIZE or 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
