"""The config of pseudo-label rounds (``configs/rounds/*.yaml``); see ``slicevos.pseudo.rounds``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from slicevos.config import check_fields, load_config
from slicevos.errors import InputError
from slicevos.pseudo.filtering import FilterConfig

ON_REGRESSION = ("rollback", "stop", "keep")


@dataclass(frozen=True)
class MemberSettings:
    """One checkpoint per seed (train.seed and data.seed); per checkpoint one member per entry
    of ``networks`` ("pair": the CPS pair's mean, "a" / "b": its TransUNet / DeepLabV3+ alone),
    each also run with the TTA flips as extra members (useful only for networks trained with
    mirroring). Default: both networks of each checkpoint, no flips (the paper's "different
    models"; measured in docs/pseudo_labels.md). ``warm_start``: from round 2 on, each member
    starts from the weights of the previous round's member of its seed (a fresh optimizer and
    schedule over the round's data) instead of from random weights. ``pseudo_weight``: from
    round 2 on, how much likelier each slice of a pseudo-labeled case is drawn than a slice
    of a labeled one (``data.case_weights``; 1 = alike). ``pseudo_share``: instead, the share of
    the labeled draws that go to pseudo-labeled slices (e.g. 0.5: half real, half pseudo,
    however many cases each side has); the weight follows from the round's slice counts
    (``pseudo_share_weight``)."""

    seeds: tuple[int, ...] = (0, 1)
    tta: tuple[str, ...] = ()
    batch_size: int = 8
    networks: tuple[str, ...] = ("a", "b")
    warm_start: bool = False
    pseudo_weight: float = 1.0
    pseudo_share: float | None = None

    @property
    def count(self) -> int:
        return len(self.seeds) * len(self.networks) * (1 + len(self.tta))


@dataclass(frozen=True)
class ValidationSettings:
    """Held-out labeled cases: ``cases`` of the base dataset (never trained on), or every
    labeled case of a separate ``dataset`` folder."""

    cases: tuple[str, ...] = ()
    dataset: str | None = None


@dataclass(frozen=True)
class RoundsConfig:
    """``configs/rounds/*.yaml``. ``reference_config`` is relative to the YAML's folder (made
    absolute on load); the other paths are relative to the working directory.
    ``train_overrides``: ``KEY=VALUE`` assignments applied to the reference config.
    ``on_regression``: what a round whose validation DSC is below the previous kept round's
    does (``slicevos.pseudo.rounds``): ``rollback`` (default), ``stop`` or ``keep``.
    ``baseline``: run round 0, the members trained on the labeled cases only."""

    base_dataset: str
    reference_config: str
    filter: FilterConfig
    out_dir: str = "runs/rounds"
    rounds: int = 2
    min_new: int = 1
    members: MemberSettings = field(default_factory=MemberSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    train_overrides: tuple[str, ...] = ()
    schema: str = "flare22"
    prepare_workers: int | None = None
    device: str = "auto"
    on_regression: str = "rollback"
    baseline: bool = False

    def __post_init__(self) -> None:
        seeds = self.members.seeds
        check_fields(self, "rounds", {
            "rounds": (self.rounds >= 1, "an integer >= 1"),
            "min_new": (self.min_new >= 0, "an integer >= 0"),
            "on_regression": (self.on_regression in ON_REGRESSION, f"one of {list(ON_REGRESSION)}"),
        })
        networks = self.members.networks
        if not set(networks) <= {"pair", "a", "b"} or len(set(networks)) != len(networks):
            raise InputError(None, f"members.networks {list(networks)} is invalid",
                             "list distinct entries of pair, a, b")
        if not seeds or len(set(seeds)) != len(seeds) or self.members.count < 2:
            raise InputError(None, f"members.seeds {list(seeds)} with networks {list(networks)} "
                             f"and tta {list(self.members.tta)} give fewer than 2 distinct members",
                             "list 2+ distinct seeds, networks [a, b], or add a TTA flip")
        if not self.members.pseudo_weight > 0:
            raise InputError(None, f"members.pseudo_weight = {self.members.pseudo_weight} is "
                             "invalid", "set it to a number > 0 (1: pseudo-labeled slices are "
                             "drawn as often as labeled ones)")
        share = self.members.pseudo_share
        if share is not None and not 0 < share < 1:
            raise InputError(None, f"members.pseudo_share = {share} is invalid",
                             "set a fraction between 0 and 1, e.g. 0.5, or null")
        if share is not None and self.members.pseudo_weight != 1:
            raise InputError(None, "members.pseudo_share and members.pseudo_weight are both set",
                             "keep one of them (pseudo_weight at 1)")
        if bool(self.validation.cases) == (self.validation.dataset is not None):
            raise InputError(None, "give exactly one of validation.cases and validation.dataset",
                             "hold out labeled base cases, or name a labeled validation folder")


def pseudo_share_weight(share: float, labeled_slices: int, pseudo_slices: int) -> float:
    """The per-slice weight of pseudo-labeled slices (labeled ones weigh 1) under which they make
    up ``share`` of the draws: ``w * P / (w * P + L) = share``."""
    if labeled_slices <= 0 or pseudo_slices <= 0:
        raise InputError(None, f"members.pseudo_share needs labeled and pseudo-labeled training "
                         f"slices, got {labeled_slices} and {pseudo_slices}",
                         "keep a labeled base case out of validation, or set pseudo_share: null")
    return share / (1 - share) * labeled_slices / pseudo_slices


def load_rounds_config(path: str | os.PathLike, assignments: Sequence[str] = ()) -> RoundsConfig:
    """Load a rounds YAML; ``reference_config`` becomes absolute (relative to the YAML)."""
    config = load_config(path, RoundsConfig, assignments=assignments)
    reference = Path(config.reference_config)
    if not reference.is_absolute():
        reference = (Path(path).parent / reference).resolve()
    if not reference.is_file():
        raise InputError(path, f"reference_config {reference} not found",
                         "give the reference training YAML, relative to this file")
    return replace(config, reference_config=str(reference))
