"""Rank statistics of slicevos-benchmark-pseudo, and its table of Spearman per pool.

The consensus default is judged on several independent pools, each graded by one generator
(``configs/rounds/pool_*.yaml``), by its *worst* pool: a score that ranks well on average but
fails on one kind of degradation would keep bad pseudo-labels of that kind. :func:`pool_table`
gives, for every (variant, member set), the Spearman of consensus against true DSC on each pool
alone, the worst pool and the mean; then per variant the worst pool over every member set.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from slicevos.pseudo.spread import pool_conditions

ALL_POOLS = "all"  # the one column when the cases are not split by pool


def _defined(x: Sequence[float], y: Sequence[float]) -> bool:
    return len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman rank correlation (rho, two-sided p); NaN for fewer than 3 pairs or a constant
    input."""
    if not _defined(x, y):
        return float("nan"), float("nan")
    from scipy.stats import spearmanr

    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def kendall(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall tau-b (tau, two-sided p); NaN like :func:`spearman`."""
    if not _defined(x, y):
        return float("nan"), float("nan")
    from scipy.stats import kendalltau

    result = kendalltau(x, y)
    return float(result.statistic), float(result.pvalue)


def pool_names(pools: Sequence[str | PathLike]) -> dict[str, str]:
    """Case id -> name of the spread pool folder that holds it (the folder's name; ``#i`` is
    appended when two folders share a name)."""
    names = [Path(p).name for p in pools]
    out: dict[str, str] = {}
    for i, (pool, name) in enumerate(zip(pools, names, strict=True)):
        label = name if names.count(name) == 1 else f"{name}#{i}"
        out.update(dict.fromkeys(pool_conditions(pool), label))
    return out


def pool_spearman(rows: dict[str, list[dict]], variants: Sequence[str], by_pool: bool,
                  order: Sequence[str] = ()
                  ) -> tuple[list[str], dict[tuple[str, str], dict[str, float]], dict[str, int]]:
    """``(pools, rho, counts)``: the pools (those in ``order`` first, in that order, then the
    others as they come; one ``"all"`` without ``by_pool``; cases of no pool go to
    ``"(other)"``), ``rho[(variant, set)][pool]`` and the volumes per pool. Rows carry
    ``scores`` (variant -> volume score), ``true_dice`` and ``pool``."""
    group = (lambda r: r.get("pool") or "(other)") if by_pool else (lambda r: ALL_POOLS)
    first = next(iter(rows.values()))
    present = list(dict.fromkeys(group(r) for r in first))
    pools = [p for p in order if p in present] + [p for p in present if p not in order]
    counts = {p: sum(group(r) == p for r in first) for p in pools}
    rho: dict[tuple[str, str], dict[str, float]] = {}
    for variant in variants:
        for set_name, set_rows in rows.items():
            rho[variant, set_name] = {p: spearman(
                [r["scores"][variant] for r in set_rows if group(r) == p],
                [r["true_dice"] for r in set_rows if group(r) == p])[0] for p in pools}
    return pools, rho, counts


def _worst(values: dict[str, float]) -> tuple[float, str]:
    defined = {k: v for k, v in values.items() if not np.isnan(v)}
    if not defined:
        return float("nan"), "-"
    key = min(defined, key=defined.__getitem__)
    return defined[key], key


def pool_table(rows: dict[str, list[dict]], variants: Sequence[str], by_pool: bool = True,
               order: Sequence[str] = ()) -> str:
    """The text table: one line per (variant, member set) with the Spearman of each pool
    (:func:`pool_spearman`), the worst pool and the mean; then per variant its worst (pool,
    member set)."""
    pools, rho, counts = pool_spearman(rows, variants, by_pool, order)
    width = max(7, *(len(f"{p} ({counts[p]})") for p in pools))
    vw = max(8, *map(len, variants))
    sw = max(10, *map(len, rows))
    lines = ["== Spearman of consensus vs true DSC per pool (volumes); worst = lowest pool",
             f"{'variant':<{vw}} {'member set':<{sw}} "
             + " ".join(f"{f'{p} ({counts[p]})':>{width}}" for p in pools)
             + f" {'worst':>7} {'mean':>7}"]
    for (variant, set_name), values in rho.items():
        worst, _ = _worst(values)
        defined = [v for v in values.values() if not np.isnan(v)]
        mean = float(np.mean(defined)) if defined else float("nan")
        lines.append(f"{variant:<{vw}} {set_name:<{sw}} "
                     + " ".join(f"{values[p]:>{width}.3f}" for p in pools)
                     + f" {worst:>7.3f} {mean:>7.3f}")
    lines.append("== worst pool per variant, over every member set")
    for variant in variants:
        cells = {(p, s): rho[variant, s][p] for s in rows for p in pools}
        worst, where = _worst({f"{p} / {s}": v for (p, s), v in cells.items()})
        lines.append(f"{variant:<{vw}} {worst:>7.3f}  ({where})")
    return "\n".join(lines)
