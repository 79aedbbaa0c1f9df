"""Deterministic slice sampling: which slice, which crop, which augmentation seed.

Sample ``i`` of training step ``step`` on rank ``rank`` comes from
``np.random.default_rng([seed, rank, step, i, stream])`` (``stream`` 0 for labeled, 1 for
unlabeled batches): a pure function of those numbers and the cache content, so a resumed run,
or a data-loader worker, draws exactly the same slices, crops and augmentations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np

from slicevos.data.cache import INDEX_FILE, SliceCache
from slicevos.errors import InputError
from slicevos.preprocessing.spacing import resampled_size

LABELED_STREAM, UNLABELED_STREAM, SPLIT_STREAM = 0, 1, 2
SEED_BOUND = 2**63


@dataclass(frozen=True)
class SampleKey:
    """One training sample: slice ``z`` of ``case_id``, labels loaded or not, and the seed of
    its crop position and augmentation."""

    case_id: str
    z: int
    with_labels: bool
    seed: int


class SliceStream:
    """The slices one kind of batch draws from: all slices of ``cases``, uniformly, or with
    ``weights`` (one float array (D,) per case) proportionally."""

    def __init__(self, stream_id: int, cases: Sequence[str], depths: Sequence[int],
                 with_labels: bool, weights: Sequence[np.ndarray] | None = None) -> None:
        if not cases:
            raise ValueError("a slice stream needs at least one case")
        self.stream_id = stream_id
        self.cases = tuple(cases)
        self.with_labels = with_labels
        self.offsets = np.cumsum([0, *depths])
        self.cumulative = None if weights is None else np.cumsum(np.concatenate(weights))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def key(self, seed: int, rank: int, step: int, i: int) -> SampleKey:
        if min(seed, rank, step, i) < 0:
            raise ValueError(f"seed, rank, step and i must be >= 0, got {(seed, rank, step, i)}")
        rng = np.random.default_rng([seed, rank, step, i, self.stream_id])
        if self.cumulative is None:
            flat = int(rng.integers(len(self)))
        else:
            flat = int(np.searchsorted(self.cumulative, rng.random() * self.cumulative[-1],
                                       side="right"))
        case = int(np.searchsorted(self.offsets, flat, side="right")) - 1
        return SampleKey(self.cases[case], flat - int(self.offsets[case]), self.with_labels,
                         int(rng.integers(SEED_BOUND)))


def case_weight_factors(cases: Sequence[str], case_weights: Mapping[str, float] | None,
                        where: str = "data.case_weights") -> np.ndarray:
    """float (len(cases),): how much likelier each slice of a case is drawn. ``case_weights``
    maps glob patterns of case ids (``fnmatch``, e.g. ``"phantom_*"``) to a weight >= 0; a
    case takes the weight of the first pattern it matches, 1 if none. A pattern matching no
    case, a negative weight, or all cases weighted 0 is an ``InputError``."""
    factors = np.ones(len(cases))
    if not case_weights:
        return factors
    assigned = np.zeros(len(cases), dtype=bool)
    for pattern, weight in case_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise InputError(None, f"{where}[{pattern!r}] = {weight!r} is invalid",
                             "give each pattern a weight >= 0")
        hits = np.array([fnmatchcase(c, str(pattern)) for c in cases], dtype=bool)
        if not hits.any():
            raise InputError(None, f"{where}: pattern {pattern!r} matches none of the "
                             f"{len(cases)} training cases {list(cases[:4])}...",
                             "fix the pattern (a glob of case ids) or remove it")
        factors[hits & ~assigned] = float(weight)
        assigned |= hits
    if not factors.any():
        raise InputError(None, f"{where} gives every training case weight 0",
                         "keep a weight > 0 for some cases")
    return factors


def split_cases(cache: SliceCache, val_cases: Sequence[str], val_fraction: float,
                seed: int) -> tuple[list[str], list[str]]:
    """(train, val) labeled case ids. ``val_cases`` names the held-out cases; otherwise
    ``round(val_fraction * labeled)`` (at least 1 when > 0) are drawn with ``seed``, fully
    annotated cases first (partial ones give no score for the classes they lack)."""
    where = cache.root / INDEX_FILE
    labeled = cache.labeled_cases
    if val_cases and val_fraction:
        raise InputError(None, f"both data.val_cases {list(val_cases)} and data.val_fraction "
                         f"{val_fraction} are set", "set only one of them")
    if val_cases:
        unknown = [c for c in val_cases if c not in labeled]
        if unknown:
            kind = "unlabeled" if set(unknown) <= set(cache.case_ids) else "not in the cache"
            raise InputError(where, f"val_cases {unknown} are {kind}",
                             f"choose held-out cases among the labeled ones {labeled[:8]}...")
        val = list(dict.fromkeys(val_cases))
    elif val_fraction:
        rng = np.random.default_rng([seed, SPLIT_STREAM])
        full = [c for c in labeled if not cache.meta(c).get("partial")]
        partial = [c for c in labeled if cache.meta(c).get("partial")]
        order = [*rng.permutation(full).tolist(), *rng.permutation(partial).tolist()]
        val = order[:max(1, round(val_fraction * len(labeled)))]
    else:
        val = []
    train = [c for c in labeled if c not in val]
    if not train:
        raise InputError(where, f"no labeled case left for training ({len(labeled)} labeled, "
                         f"{len(val)} held out for validation)",
                         "hold out fewer cases (val_cases / val_fraction) or add labeled cases")
    return train, val


def foreground_center(labels: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A pixel (row, col) of a class drawn uniformly among the foreground classes present in
    ``labels`` (H, W), so small organs are picked as often as large ones; None if none."""
    present = np.flatnonzero(np.bincount(labels.ravel())[1:]) + 1
    if present.size == 0:
        return None
    pixels = np.flatnonzero(labels.ravel() == rng.choice(present))
    row, col = divmod(int(rng.choice(pixels)), labels.shape[1])
    return row, col


def crop_or_pad(image: np.ndarray, labels: np.ndarray | None, size: tuple[int, int],
                center: tuple[int, int] | None, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Cut ``image`` (C, H, W) and ``labels`` (H, W) to ``size`` (h, w).

    Along an axis longer than the crop the window is centred on ``center`` (clamped to the
    slice) or placed uniformly at random when ``center`` is None; a shorter axis is padded
    evenly on both sides with 0 (image: the darkest value of every window; labels: background).
    """
    slices, pads = [], []
    for axis, want in enumerate(size):
        have = image.shape[axis + 1]
        if have >= want:
            start = (int(rng.integers(have - want + 1)) if center is None
                     else min(max(center[axis] - want // 2, 0), have - want))
            slices.append(slice(start, start + want))
            pads.append((0, 0))
        else:
            slices.append(slice(None))
            pads.append(((want - have) // 2, want - have - (want - have) // 2))
    image = np.pad(image[:, slices[0], slices[1]], [(0, 0), *pads])
    if labels is not None:
        labels = np.pad(labels[slices[0], slices[1]], pads)
    return image, labels


def to_spacing(image: np.ndarray, labels: np.ndarray | None, spacing: Sequence[float],
               target_mm: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample a slice, uint8 (C, H, W) and labels (H, W), from its in-plane ``spacing``
    (dy, dx) mm to ``target_mm`` pixels (linear, area when shrinking; labels nearest). No-op
    when ``target_mm`` is None or the size would not change."""
    height, width = image.shape[-2:]
    size = resampled_size((height, width), spacing, target_mm)
    if size is None:
        return image, labels
    import cv2

    shrink = size[0] < height or size[1] < width
    mode = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image.transpose(1, 2, 0)), size[::-1],
                         interpolation=mode)
    resized = resized.reshape(size[0], size[1], -1).transpose(2, 0, 1)
    if labels is not None:
        labels = cv2.resize(np.ascontiguousarray(labels), size[::-1],
                            interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(resized), labels
