"""slicevos-run-rounds: iterative pseudo-labeling from one YAML (configs/rounds/*.yaml).

Each round: build the slice cache, train one CPS pair per seed, pseudo-label the unlabeled
cases (members: each pair's two networks, or the pairs, + TTA flips), filter by consensus
(the shipped configs keep the best half of each round), write the next round's dataset
(labeled + accepted), and score the members on the held-out validation cases. The
table OUT/rounds.csv gets one row per round (round 0 = labeled-only baseline with
``baseline: true``). A round whose validation DSC falls below the last kept round's is flagged
and, by default (``on_regression: rollback``), undone: OUT/result.json names the model to use.
Killed runs resume where they stopped: rerun the same command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slicevos.cli.common import run_cli
from slicevos.pseudo.rounds import PseudoSteps, RoundContext
from slicevos.pseudo.rounds_config import RoundsConfig


class ModelSteps:
    """The round steps that need models: train, generate, validate."""

    def __init__(self, config: RoundsConfig, data: PseudoSteps) -> None:
        from slicevos.io.labels import get_schema
        from slicevos.training.distributed import resolve_device

        self.config, self.data = config, data
        self.schema = get_schema(config.schema)
        self.device = resolve_device(config.device)

    def _reference_config(self, ctx: RoundContext, seed: int) -> Any:
        from slicevos.cli.training_args import resolve_relative_augment
        from slicevos.config import load_config
        from slicevos.training.reference import ReferenceConfig

        held_out = ", ".join(self.config.validation.cases)
        path = Path(self.config.reference_config)
        warm = []
        if self.config.members.warm_start and ctx.round >= 2:
            previous = ctx.dir.parent / f"round_{ctx.round - 1:02d}" / "members" / f"seed{seed}"
            warm = [f"train.init_weights={(previous / 'last.pt').absolute()}"]
        config = load_config(path, ReferenceConfig, assignments=[
            *self.config.train_overrides, f"schema={self.config.schema}",
            f"data.cache_dir={ctx.cache}", f"data.val_cases=[{held_out}]", "data.val_fraction=0",
            f"data.seed={seed}", f"train.seed={seed}", f"train.out_dir={ctx.member_dir(seed)}",
            f"train.device={self.device.type}",
            *(["cps.mode=supervised"] if ctx.round == 0 else []), *warm,  # round 0: labeled only
            *self._pseudo_weights(ctx)])
        return resolve_relative_augment(config, path)

    def _pseudo_weights(self, ctx: RoundContext) -> list[str]:
        """``data.case_weights`` for the round's pseudo-labeled cases (labeled in its dataset, not
        in the base dataset): ``members.pseudo_weight``, or the weight that gives them
        ``members.pseudo_share`` of the draws (slice counts of the round's cache); none in
        rounds 0-1."""
        import json

        from slicevos.data.cache import SliceCache
        from slicevos.data.dataset_folder import discover_cases
        from slicevos.data.sampling import split_cases
        from slicevos.pseudo.rounds_config import pseudo_share_weight

        members = self.config.members
        if (members.pseudo_weight == 1 and members.pseudo_share is None) or ctx.round < 2:
            return []
        labeled = lambda folder: {c.case_id for c in discover_cases(folder, self.schema)  # noqa: E731
                                  if c.split == "labeled"}
        pseudo = sorted(labeled(ctx.dataset) - labeled(self.config.base_dataset))
        if not pseudo:
            return []
        weight = members.pseudo_weight
        if members.pseudo_share is not None:
            cache = SliceCache(ctx.cache)
            slices = lambda cases: sum(cache.num_slices(c) for c in cases)  # noqa: E731
            train, _ = split_cases(cache, self.config.validation.cases, 0.0, 0)  # as the members
            real = sorted(set(train) - set(pseudo))
            weight = pseudo_share_weight(members.pseudo_share, slices(real), slices(pseudo))
        return [f"data.case_weights={json.dumps(dict.fromkeys(pseudo, round(weight, 6)))}"]

    def _members(self, ctx: RoundContext) -> list[Any]:
        from slicevos.inference.reference.ensemble import reference_members

        members = self.config.members
        return reference_members(ctx.results["train"]["checkpoints"], members.tta, self.device,
                                 members.batch_size, networks=members.networks)

    def train(self, ctx: RoundContext) -> dict[str, Any]:
        from slicevos.training.reference import ReferenceTrainer

        checkpoints = []
        for seed in self.config.members.seeds:
            last = ctx.member_dir(seed) / "last.pt"
            ReferenceTrainer(self._reference_config(ctx, seed), resume=last.is_file()).fit()
            checkpoints.append(str(last.absolute()))
        return {"checkpoints": checkpoints}

    def generate(self, ctx: RoundContext) -> dict[str, Any]:
        from slicevos.inference.reference.ensemble import predict_members
        from slicevos.pseudo.generation import cases_from_inputs, generate_pseudo_labels

        if not ctx.results["cache"]["unlabeled"]:
            return {"candidates": 0}
        cases = cases_from_inputs([ctx.dataset], self.schema)
        members = self._members(ctx)
        summary = generate_pseudo_labels(
            cases, lambda volume: predict_members(volume, members), [m.identity() for m in members],
            ctx.pseudo, self.schema, self.config.filter.variant)
        return {"candidates": len(cases), "seconds": round(summary.seconds, 1)}

    def validate(self, ctx: RoundContext) -> dict[str, Any]:
        """Mean over members of the organ-mean DSC, and the DSC of the fused ensemble (members
        and TTA flips, majority vote): the quality a pseudo-label of this round has."""
        from slicevos.data.cache import SliceCache
        from slicevos.inference.reference.ensemble import predict_members
        from slicevos.inference.reference.segmenter import ReferenceSegmenter
        from slicevos.inference.validation import volume_dice
        from slicevos.io.loader import load_volume
        from slicevos.metrics.overlap import dice_per_class
        from slicevos.pseudo.consensus import fuse_members

        cache_dir, case_ids = self.data.validation_cases(ctx)
        cache = SliceCache(cache_dir)
        per_member = [volume_dice(ReferenceSegmenter.from_checkpoint(
            p, self.device, self.config.members.batch_size), cache, case_ids, self.schema)["dice_mean"]
            for p in ctx.results["train"]["checkpoints"]]
        members = self._members(ctx)
        per_class: dict[int, list[float]] = {}
        for case_id in case_ids:
            volume = load_volume(cache.meta(case_id)["source"]["image"])
            fused = fuse_members(predict_members(volume, members), self.schema.num_classes)
            annotated = [c for c in cache.meta(case_id)["annotated_class_ids"] if c in self.schema.ids]
            for c, value in dice_per_class(np.asarray(cache.labels(case_id)), fused, annotated).items():
                per_class.setdefault(c, []).append(value)
        return {"dice": float(np.mean(per_member)), "dice_members": per_member,
                "dice_fused": float(np.mean([np.mean(v) for v in per_class.values()])),
                "cases": case_ids}


def _body(args: argparse.Namespace) -> int:
    from slicevos.pseudo.rounds import RoundRunner, format_table
    from slicevos.pseudo.rounds_config import load_rounds_config

    named = {"out_dir": args.out, "base_dataset": args.base_dataset, "rounds": args.rounds}
    assignments = [*args.set, *(f"{k}={v}" for k, v in named.items() if v is not None)]
    config = load_rounds_config(args.config, assignments)
    data = PseudoSteps(config)
    model = ModelSteps(config, data)
    steps = {"cache": data.cache, "train": model.train, "generate": model.generate,
             "filter": data.filter, "dataset": data.dataset, "validate": model.validate}
    runner = RoundRunner(config, steps)
    rows = runner.run()
    print(format_table(rows))
    print(f"stopped: {runner.stop_reason}; table {Path(config.out_dir) / 'rounds.csv'}, "
          f"result (model to use) {Path(config.out_dir) / 'result.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicevos-run-rounds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="rounds YAML, e.g. configs/rounds/fast_cpu.yaml")
    parser.add_argument("--out", help="output folder (overrides out_dir)")
    parser.add_argument("--base-dataset", help="labeled + unlabeled dataset folder (overrides "
                        "base_dataset)")
    parser.add_argument("--rounds", type=int, help="number of rounds (overrides rounds)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set filter.threshold=0.95")
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
