"""Consensus score of M members' label volumes of one case, and their fused pseudo-label.

``member_labels`` is a uint8 array ``(M, D, H, W)``: member m's label volume on the canonical
axial grid (slice k = ``[:, k]``). Per class c, with binary masks ``Y_m^k = (labels[m, k] == c)``:

``dice_mean`` (DESIGN.md's formula, per slice). ``Y_avg^k`` is the voxel-wise mean of the M
binary masks (values 0, 1/M, ..., 1). ``DSC(Y_m^k, Y_avg^k)`` is the soft Dice
``2 * sum(a * b) / (sum(a) + sum(b))`` with a = member mask, b = mean mask; with integer counts
(n(v) = members that have c at voxel v) this is ``2 * S / (M * |Y_m^k| + T)``, where
``S = sum_{v in Y_m^k} n(v)`` and ``T = sum_m |Y_m^k|``. A member that misses the organ on a
slice where another member has it scores 0 there; both empty scores 1.

``unanimous_iou_3d`` (the default): per class, over the whole volume, the voxels where every
member has c over the voxels where some member has c, ``|Y_1 & ... & Y_M| / |Y_1 | ... | Y_M|``
(for two members their 3D IoU). It is the share of the organ's candidate region that no member
contests. Unlike ``fused_dice_3d`` it has no "both empty" term (a member that misses the organ
empties the intersection: 0) and is not anchored on a label the members voted for themselves;
on the IoU scale (for two members IoU = DSC / (2 - DSC)) the mean over organs moves most with
the large, well-found organs and least with small ones whose agreement says little about their
true DSC. Chosen by its worst pool over four quality-spread pools, each graded by one generator
(docs/pseudo_labels.md, "Per-pool benchmark"); no variant reaches a Spearman of 0.90 on every
pool (scans truncated in z fool every member alike). ``slices`` does not apply to it.

``unanimous_dice_3d``: the same two masks on the Dice scale, ``2 |Y_1 & ... & Y_M| / (|Y_1 &
... & Y_M| + |Y_1 | ... | Y_M|)`` (for two members their 3D Dice); a monotone map of the IoU per
organ, but the mean over organs weighs them differently. It led on the seen holdout pools and
lost on a fresh draw (docs/pseudo_labels.md, "Second check").

``fused_dice_3d`` (the default until the per-pool benchmark): per class, the mean over members
of the 3D Dice between member m's mask and the mask of the fused pseudo-label F
(:func:`fuse_members`, the label that is written): ``2 |Y_m & F| / (|Y_m| + |F|)`` over the
whole volume (both empty -> 1). It estimates how good the written label is, in the unit the
label is judged in (3D DSC per organ). Two weaknesses the pools showed: with two members F is
member 0's label (every disagreement is a tie), so half of each organ's score is the constant 1;
and a class some members have but F lacks scores the share of members that lack it (their empty
mask "agrees" with the empty F), so a one-voxel speck of one member counts as well agreed.
``slices`` does not apply to it.

``paper_iou_majority`` (what the paper's code did): IoU of ``Y_m^k`` against the voxel-wise
majority vote ``Maj^k = (n(v) > M/2)``; both empty -> 1, one empty -> 0.

Slices counted (``slices``): ``"union"`` (default) = only the slices where at least one member
has class c, so a case is not inflated by the many slices where nobody sees the organ; ``"all"``
= every slice (empty-everywhere slices count 1). A class that no member predicts anywhere is
*absent*: its per-class score is 1.0, it is left out of ``present`` and of the volume score.

The per-class score is the mean over counted slices k and members m. The volume score is the
mean of the per-class scores over the present classes (each organ weighs the same, as in the
FLARE mean DSC, so a poorly agreed small organ lowers it as much as the liver); a case where no
member predicts anything scores 0.0 (an empty consensus carries no label to learn from).

All counts come from one integer tally per member (no float copies of the whole volume), taken
over chunks of slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slicevos.errors import InputError

VARIANTS = ("unanimous_iou_3d", "unanimous_dice_3d", "fused_dice_3d", "dice_mean",
            "paper_iou_majority")
_UNANIMOUS = ("unanimous_iou_3d", "unanimous_dice_3d")
DEFAULT_VARIANT = "unanimous_iou_3d"
SLICE_RULES = ("union", "all")
_CHUNK_VOXELS = 1 << 24  # voxels (over all members) processed at once


@dataclass(frozen=True)
class ConsensusScore:
    """Consensus of one case. ``per_class`` holds every requested class id (absent ones 1.0);
    ``present`` lists the classes some member predicts; ``volume`` averages over those."""

    volume: float
    per_class: dict[int, float]
    present: tuple[int, ...]
    variant: str
    slices: str = "union"
    absent: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        absent = tuple(c for c in self.per_class if c not in self.present)
        object.__setattr__(self, "absent", absent)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: class ids become string keys."""
        return {"volume": self.volume, "per_class": {str(c): v for c, v in self.per_class.items()},
                "present": list(self.present), "variant": self.variant, "slices": self.slices}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConsensusScore:
        """Inverse of :meth:`to_dict` (raises KeyError/ValueError/TypeError on bad data)."""
        return cls(volume=float(data["volume"]),
                   per_class={int(c): float(v) for c, v in data["per_class"].items()},
                   present=tuple(int(c) for c in data["present"]), variant=str(data["variant"]),
                   slices=str(data.get("slices", "union")))


def _check_members(member_labels: np.ndarray) -> None:
    if member_labels.ndim != 4:
        raise ValueError(f"member_labels must be (M, D, H, W), got shape {member_labels.shape}")
    if member_labels.shape[0] < 2:
        raise ValueError(f"need at least 2 members, got {member_labels.shape[0]}")
    if member_labels.shape[0] > 255:
        raise ValueError(f"at most 255 members, got {member_labels.shape[0]}")
    if member_labels.dtype != np.uint8:
        raise ValueError(f"member_labels must be uint8 class ids, got {member_labels.dtype}")


def _votes(chunk: np.ndarray) -> np.ndarray:
    """``votes[m, ...]`` = members (m included) whose label equals member m's (uint8, the
    chunk's shape)."""
    m_count = chunk.shape[0]
    votes = np.ones(chunk.shape, np.uint8)
    for a in range(m_count):
        for b in range(a + 1, m_count):
            same = chunk[a] == chunk[b]
            votes[a] += same
            votes[b] += same
    return votes


def _chunks(depth: int, member_labels: np.ndarray) -> range:
    m_count, _, height, width = member_labels.shape
    step = max(1, _CHUNK_VOXELS // max(1, m_count * height * width))
    return range(0, depth, step)


def _tally(member_labels: np.ndarray, num_labels: int) -> np.ndarray:
    """``tally[m, k, c, j]`` = voxels of slice k where member m has label c and j + 1 members
    (m included) agree with it; int64 ``(M, D, num_labels, M)``."""
    m_count, depth = member_labels.shape[:2]
    tally = np.zeros((m_count, depth, num_labels, m_count), np.int64)
    for start in (steps := _chunks(depth, member_labels)):
        chunk = member_labels[:, start:start + steps.step]
        d = chunk.shape[1]
        votes = _votes(chunk)
        slice_offset = (np.arange(d, dtype=np.intp) * num_labels)[:, None, None]
        for m in range(m_count):
            codes = (chunk[m].astype(np.intp) + slice_offset) * m_count + (votes[m] - 1)
            counts = np.bincount(codes.ravel(), minlength=d * num_labels * m_count)
            tally[m, start:start + d] = counts.reshape(d, num_labels, m_count)
    return tally


def _fused_overlap(member_labels: np.ndarray, fused: np.ndarray,
                   num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inter, fused_size)`` against the fused label uint8 ``(D, H, W)``: ``inter[m, c]`` =
    voxels where member m and the fused label both have c, int64 (M, num_labels);
    ``fused_size[c]`` = voxels of c in the fused label, int64 (num_labels,)."""
    m_count, depth = member_labels.shape[:2]
    inter = np.zeros((m_count, num_labels), np.int64)
    fused_size = np.zeros(num_labels, np.int64)
    for start in (steps := _chunks(depth, member_labels)):
        chunk = member_labels[:, start:start + steps.step]
        fused_chunk = fused[start:start + chunk.shape[1]]
        fused_size += np.bincount(fused_chunk.ravel(), minlength=num_labels)
        for m in range(m_count):
            inter[m] += np.bincount(fused_chunk[chunk[m] == fused_chunk], minlength=num_labels)
    return inter, fused_size


def _unanimous_overlap(tally: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(inter, union)`` per label from the tally ``(M, D, num_labels, M)``: voxels where every
    member has the label, and where at least one has it (int64, (num_labels,)). A voxel that n
    members label c appears n times in the tallies, each time with n agreeing members."""
    m_count = tally.shape[0]
    per_agree = tally.sum(axis=(0, 1))                # (num_labels, M): sum over m and slices
    inter = per_agree[:, m_count - 1] // m_count
    union = (per_agree // np.arange(1, m_count + 1)).sum(axis=-1)
    return inter, union


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 1.0 where den == 0 (both masks empty)."""
    out = np.ones(num.shape, np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _class_scores(tally_c: np.ndarray, variant: str) -> np.ndarray:
    """Per (member, slice) score of one class from its tally ``(M, D, M)``."""
    m_count = tally_c.shape[0]
    agree = np.arange(1, m_count + 1)
    size = tally_c.sum(axis=-1)                       # |Y_m^k|
    total = size.sum(axis=0, keepdims=True)            # T^k = sum_m |Y_m^k|
    if variant == "dice_mean":
        support = (tally_c * agree).sum(axis=-1)       # S = sum over Y_m^k of n(v)
        return _ratio(2.0 * support, m_count * size + total)
    majority = agree > m_count / 2
    inter = tally_c[..., majority].sum(axis=-1)        # |Y_m^k & Maj^k|
    # a majority voxel with v agreeing members appears v times in the members' tallies
    maj_size = (tally_c[..., majority].sum(axis=0) // agree[majority]).sum(axis=-1)
    return _ratio(inter.astype(np.float64), size + maj_size[None] - inter)


def consensus_score(
    member_labels: np.ndarray, class_ids: Sequence[int], variant: str = DEFAULT_VARIANT,
    slices: str = "union", fused: np.ndarray | None = None,
) -> ConsensusScore:
    """Consensus of M label volumes uint8 ``(M, D, H, W)`` over ``class_ids`` (see module doc).
    ``fused``: their :func:`fuse_members` label, when the caller has it (``fused_dice_3d``
    computes it otherwise; the other variants do not use it)."""
    if variant not in VARIANTS:
        raise InputError(None, f"unknown consensus variant {variant!r}",
                         f"use one of {list(VARIANTS)}")
    if slices not in SLICE_RULES:
        raise InputError(None, f"unknown slice rule {slices!r}", f"use one of {list(SLICE_RULES)}")
    _check_members(member_labels)
    class_ids = [int(c) for c in class_ids]
    if not class_ids or min(class_ids) < 1 or max(class_ids) > 255:
        raise ValueError(f"class_ids must be foreground ids in 1..255, got {class_ids}")
    num_labels = max(int(member_labels.max(initial=0)), *class_ids) + 1
    tally = _tally(member_labels, num_labels)
    if variant == "fused_dice_3d":
        if fused is None:
            fused = fuse_members(member_labels, num_labels)
        elif fused.shape != member_labels.shape[1:]:
            raise ValueError(f"fused label {fused.shape} vs members {member_labels.shape}")
        inter, fused_size = _fused_overlap(member_labels, fused, num_labels)
        member_size = tally.sum(axis=(1, 3))           # |Y_m| per class, (M, num_labels)
    if variant in _UNANIMOUS:
        inter, union = _unanimous_overlap(tally)
    per_class: dict[int, float] = {}
    present: list[int] = []
    for c in class_ids:
        tally_c = tally[:, :, c, :]
        on_slice = tally_c.sum(axis=(0, 2)) > 0       # some member has c on slice k
        if not on_slice.any():
            per_class[c] = 1.0
            continue
        present.append(c)
        if variant == "fused_dice_3d":
            dice = _ratio(2.0 * inter[:, c], member_size[:, c] + fused_size[c])
            per_class[c] = float(dice.mean())
            continue
        if variant == "unanimous_iou_3d":
            per_class[c] = float(inter[c] / union[c])
            continue
        if variant == "unanimous_dice_3d":
            per_class[c] = float(2.0 * inter[c] / (inter[c] + union[c]))
            continue
        scores = _class_scores(tally_c, variant)
        per_class[c] = float(scores[:, on_slice].mean() if slices == "union" else scores.mean())
    volume = float(np.mean([per_class[c] for c in present])) if present else 0.0
    return ConsensusScore(volume, per_class, tuple(present), variant, slices)


def fuse_members(member_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Voxel-wise plurality vote of uint8 ``(M, D, H, W)`` -> uint8 ``(D, H, W)``.

    Background takes part in the vote like any class. Ties go to the label of the lowest-index
    member among the tied labels (order the members by trust: best model first). ``num_classes``
    = max id + 1; a label outside ``0..num_classes - 1`` raises ValueError.
    """
    _check_members(member_labels)
    if int(member_labels.max(initial=0)) >= num_classes:
        raise ValueError(f"labels reach {int(member_labels.max())}, "
                         f"beyond num_classes={num_classes}")
    depth = member_labels.shape[1]
    fused = np.empty(member_labels.shape[1:], np.uint8)
    for start in (steps := _chunks(depth, member_labels)):
        chunk = member_labels[:, start:start + steps.step]
        fused[start:start + chunk.shape[1]] = _plurality(chunk)
    return fused


def _plurality(chunk: np.ndarray) -> np.ndarray:
    """Plurality vote of uint8 (M, ...) -> (...): the first (lowest-index) member wins ties."""
    best = np.argmax(_votes(chunk), axis=0)
    return np.take_along_axis(chunk, best[None], axis=0)[0]
