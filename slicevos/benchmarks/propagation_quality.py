"""Scoring propagation from key slices: per-organ DSC on the non-key slices, split into the
organ's *end* slices and its *bulk*.

End slices of an organ: the non-key slices beyond the outermost key slices, or within
``margin`` slices of the ground truth's first or last slice of that organ. Bulk: every other
non-key slice. DSC is computed over the slices of a split as one 3D overlap; an organ with
neither truth nor prediction on a split's slices is left out of that split.

Also the cases the quality benchmark scores (``real_cases``, ``phantom_cases``), the key
layouts (``key_layouts``: each spacing from several first slices) and its table
(``print_score_table``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from slicevos.io import FLARE22, FLARE23, Volume, load_labels, load_volume
from slicevos.metrics.overlap import dice
from slicevos.phantom import PhantomConfig, make_phantom

SPLITS = ("all", "bulk", "ends")


def end_slices(truth: np.ndarray, class_id: int, keys: Sequence[int],
               margin: int = 5) -> np.ndarray:
    """(D,) bool: the end slices of organ ``class_id`` (see the module doc), keys excluded."""
    depth = len(truth)
    ends = np.zeros(depth, bool)
    ends[:min(keys)] = True
    ends[max(keys) + 1:] = True
    present = np.nonzero((truth == class_id).any(axis=(1, 2)))[0]
    if len(present):
        for edge in (present[0], present[-1]):
            ends[max(0, edge - margin):edge + margin + 1] = True
    ends[list(keys)] = False
    return ends


def split_dice(truth: np.ndarray, pred: np.ndarray, keys: Sequence[int],
               class_ids: Iterable[int], margin: int = 5) -> dict[str, dict[int, float]]:
    """Split -> class id -> DSC of ``pred`` against ``truth`` (D, H, W) on that split's slices
    (``all``: every non-key slice). Organs absent from both on a split are left out."""
    non_key = np.ones(len(truth), bool)
    non_key[list(keys)] = False
    scores: dict[str, dict[int, float]] = {split: {} for split in SPLITS}
    for class_id in class_ids:
        ends = end_slices(truth, class_id, keys, margin)
        for split, chosen in (("all", non_key), ("bulk", non_key & ~ends), ("ends", ends)):
            t, p = truth[chosen] == class_id, pred[chosen] == class_id
            if t.any() or p.any():
                scores[split][class_id] = dice(t, p)
    return scores


Case = tuple[str, Volume, np.ndarray]  # name, volume, true labels (D, H, W)


def real_cases(data: Path, names: Sequence[str] | None = None) -> Iterator[Case]:
    """(name, volume, FLARE22 labels) of the real volumes with >= 20 slices."""
    for label_file in sorted(data.glob("*/label_flare.nii.gz")):
        if names and label_file.parent.name not in names:
            continue
        volume = load_volume(label_file.parent / "ct.nii.gz")
        truth, _ = load_labels(label_file, reference=volume, schema=FLARE22)
        if len(truth) >= 20:
            yield label_file.parent.name, volume, truth


def phantom_cases(count: int, shape: Sequence[int], seed: int,
                   tumors: bool = False) -> Iterator[Case]:
    """``count`` phantoms from seed ``seed`` on; ``tumors``: only phantoms with 2 or more
    tumors (FLARE23 labels; seeds without are skipped)."""
    config = PhantomConfig(shape=tuple(shape), with_tumors=tumors, tumor_probability=1.0,
                           max_tumors=4, tumor_organs=("liver", "right_kidney", "left_kidney"))
    found, s = 0, seed
    while found < count:
        phantom = make_phantom(s, config)
        s += 1
        if tumors and len(phantom.tumors) < 2:
            continue
        found += 1
        yield f"phantom_s{s - 1}", phantom.to_volume(), phantom.labels


def key_layouts(steps: Sequence[int], offsets: Sequence[int] | None) -> list[tuple[int, int]]:
    """(step, offset) pairs: each step from each offset (None: 0 and step // 2), offsets
    reduced modulo the step, without repeats."""
    pairs = []
    for step in steps:
        for offset in (offsets if offsets is not None else (0, step // 2)):
            if (step, offset % step) not in pairs:
                pairs.append((step, offset % step))
    return pairs


ScoreTable = dict[tuple[int, int, str, str], dict[str, list[float]]]


def print_score_table(scores: ScoreTable, cases: Sequence[str]) -> None:
    organs = [c.name for c in FLARE23.classes if any(c.name in t for t in scores.values())]
    short = {n: n.replace("inferior_vena_cava", "ivc").replace("_adrenal_gland", "_adr")[:9]
             for n in organs}
    names = {name for _, _, name, _ in scores}
    print(f"\nDSC on non-key slices (all / bulk / ends), mean over {', '.join(cases)}; "
          "keys: every N @ first key")
    width = max(16, *(len(n) + 2 for n in names))
    print(f"{'keys':<13}{'method':<{width}}{'split':<6}"
          + "".join(f"{short[o]:>10}" for o in organs) + f"{'mean':>8}{'s/vol':>8}")
    order = {name: i for i, name in enumerate(dict.fromkeys(n for _, _, n, _ in scores))}
    for step, offset, name, split in sorted(scores, key=lambda k: (k[0], k[1], order[k[2]],
                                                                   SPLITS.index(k[3]))):
        table = scores[(step, offset, name, split)]
        means = [float(np.mean(table[o])) if o in table else float("nan") for o in organs]
        print(f"{f'every {step} @{offset}':<13}{name:<{width}}{split:<6}"
              + "".join(f"{m:>10.3f}" for m in means)
              + f"{np.nanmean(means):>8.3f}{np.mean(table['seconds']):>8.1f}")
