"""Which pseudo-labeled cases join the next round's labeled set.

Whole-volume rule: a case is accepted when its volume consensus score is >= the cutoff and it
has at least ``min_organs`` present classes. The cutoff is ``threshold``, or with
``top_fraction`` f the score of the ``ceil(f * N)``-th best of the N cases; cases tied with it
are all accepted (so the result never depends on the order of the cases).

Organ pruning (``organ_threshold`` given): an accepted case keeps only the organs whose
per-class consensus is >= ``organ_threshold``; the others become *unannotated* (set to
background in the label file and left out of its ``annotations.yaml`` entry, so the
partial-label loss ignores them), and the case counts as partial. A case left with fewer than
``min_organs`` organs is rejected: a poorly agreed organ mostly teaches the next round the
members' mistakes (measured in docs/pseudo_labels.md).

Per-organ mode (``per_organ``): a case not accepted as a whole still joins as a *partially
labeled* case when at least ``min_organs`` of its present classes score >= the organ cutoff
(``organ_threshold``, by default the volume cutoff). Only those classes are kept, as above.
Absent classes (no member predicts them) are never kept: agreement on "nothing" is no
evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from slicevos.config import check_fields
from slicevos.errors import InputError
from slicevos.pseudo.consensus import DEFAULT_VARIANT, VARIANTS
from slicevos.pseudo.folder import CaseScore


def _unit(value: float | None) -> bool:
    return value is None or (isinstance(value, int | float) and 0.0 <= value <= 1.0)


@dataclass(frozen=True)
class FilterConfig:
    """Selection rule; give exactly one of ``threshold`` (score in 0..1) and ``top_fraction``
    (in (0, 1]). ``organ_threshold``: per-organ cutoff of every kept case (module doc)."""

    threshold: float | None = None
    top_fraction: float | None = None
    variant: str = DEFAULT_VARIANT
    per_organ: bool = False
    organ_threshold: float | None = None
    min_organs: int = 1

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.top_fraction is None):
            given = "both" if self.threshold is not None else "neither"
            raise InputError(None, f"{given} of threshold and top_fraction given",
                             "give exactly one: an absolute score threshold (--threshold 0.9) or "
                             "the fraction of best cases to keep (--top-fraction 0.3)")
        frac = self.top_fraction
        check_fields(self, "filter", {
            "threshold": (_unit(self.threshold), "a consensus score in 0..1"),
            "top_fraction": (frac is None or (isinstance(frac, int | float) and 0 < frac <= 1),
                             "a fraction in (0, 1]"),
            "variant": (self.variant in VARIANTS, f"one of {list(VARIANTS)}"),
            "organ_threshold": (_unit(self.organ_threshold), "a per-organ score in 0..1"),
            "min_organs": (isinstance(self.min_organs, int) and self.min_organs >= 1,
                           "an integer >= 1"),
        })


@dataclass(frozen=True)
class Decision:
    """Outcome for one case. ``accepted``: it joins the labeled set; ``class_ids``: the classes
    its label file keeps (all present ones for a whole volume, the confident organs when
    ``partial``); ``score``: the volume consensus; ``per_class``: consensus of the present
    classes (classes that no member predicts are left out)."""

    case_id: str
    accepted: bool
    class_ids: tuple[int, ...]
    score: float
    partial: bool = False
    per_class: dict[int, float] | None = None


def score_cutoff(values: Sequence[float], config: FilterConfig) -> float:
    """The volume score a case needs among cases scoring ``values``: ``threshold``, or the
    top-fraction rank's score (relative to this round's scores, so it carries across rounds
    whose score levels differ)."""
    if config.threshold is not None:
        return float(config.threshold)
    if not len(values):
        raise InputError(None, "no cases to rank", "check the pseudo-label folder")
    ranked = sorted((float(v) for v in values), reverse=True)
    keep = min(len(ranked), max(1, math.ceil(config.top_fraction * len(ranked) - 1e-9)))
    return ranked[keep - 1]


def volume_cutoff(scores: Sequence[CaseScore], config: FilterConfig) -> float:
    """:func:`score_cutoff` of the cases' volume scores."""
    return score_cutoff([s.score for s in scores], config)


def select_cases(scores: Sequence[CaseScore], config: FilterConfig) -> list[Decision]:
    """One decision per case, in the order of ``scores`` (see module doc for the rules)."""
    for s in scores:
        if s.consensus.variant != config.variant:
            raise InputError(s.record.case_dir, f"scored with {s.consensus.variant}, config asks "
                             f"for {config.variant}", "score the folder with the config's variant")
    cutoff = volume_cutoff(scores, config) if scores else 0.0
    organ_cutoff = cutoff if config.organ_threshold is None else config.organ_threshold
    decisions = []
    for s in scores:
        c = s.consensus
        per_class = {k: c.per_class[k] for k in c.present}
        common = {"case_id": s.case_id, "score": c.volume, "per_class": per_class}
        confident = tuple(k for k in c.present if c.per_class[k] >= organ_cutoff)
        if c.volume >= cutoff and len(c.present) >= config.min_organs:
            if config.organ_threshold is None:
                decisions.append(Decision(accepted=True, class_ids=c.present, **common))
                continue
            if len(confident) >= config.min_organs:
                decisions.append(Decision(accepted=True, class_ids=confident,
                                          partial=confident != c.present, **common))
                continue
        if config.per_organ and len(confident) >= config.min_organs:
            decisions.append(Decision(accepted=True, class_ids=confident, partial=True, **common))
        else:
            decisions.append(Decision(accepted=False, class_ids=(), **common))
    return decisions
