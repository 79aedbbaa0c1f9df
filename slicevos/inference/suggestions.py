"""Which slices a person should check (and correct) next: the page's "check next" list, and
the report's "slices to check first" when the keys were drawn (``slicevos-infer --keys``;
with reference keys the report ranks per-slice uncertainty, since the keys may be wrong too).

Per organ, each slice ``w`` has an expected error::

    error(w) = sqrt(area(w) / max area)  x  d(w)  x  (1 + doubt(w))

- ``area``: the organ's propagated pixels on ``w``. A boundary that drifts by a pixel
  makes as many wrong pixels as the outline is long, and an outline's length grows as the
  square root of the area it holds: a small tip of an organ, whose shape changes fastest,
  counts for more than its area says;
- ``d``: slices to the organ's nearest key (its own keys and the whole-slice keys): error
  grows with distance from what was drawn, and is 0 on keys;
- ``doubt``: the session's per-organ uncertainty (the two directions' disagreement between
  keys, the warp residual beyond the outermost key).

A non-key slice ``z`` scores the error a key there would remove: every slice ``w`` nearer
to ``z`` than to its nearest key has its distance cut from ``d(w)`` to ``|w - z|``::

    score(z) = sum_w sqrt(area(w) / max area)  x  (1 + doubt(w))  x  max(0, d(w) - |w - z|)

So a key goes where it helps the most slices (the middle of a long gap, as bisection
does, weighed by what is there), not where one slice is worst. Candidates and counted slices
are the organ's propagated slices and those just past its ends, within ``end_reach`` slices,
which count as the end slice would with half weight: the propagation may have stopped
early. Without an organ the scores of every organ (each scaled by its own largest area) add
up. Ranking: best first, a
chosen slice suppresses its ``min_separation`` neighbours (as
``slicevos.inference.reporting.report.uncertainty_ranking``). Measured against bisection:
docs/labeling.md.
"""

from __future__ import annotations

import numpy as np

from slicevos.inference.reporting.report import uncertainty_ranking
from slicevos.inference.session import PropagationSession


def organ_scores(session: PropagationSession, object_id: int, end_reach: int = 3
                 ) -> np.ndarray:
    """(D,) float64 scores of one organ: the expected error a key on each slice would remove
    (module doc); 0 on its keys."""
    depth = session.depth
    area = session.outputs.area(object_id).astype(np.float64)
    keys = np.array(session.object_key_slices(object_id), np.int64)
    if not len(keys) or area.max() <= 0:
        return np.zeros(depth)
    distance = np.abs(np.arange(depth)[:, None] - keys[None, :]).min(1).astype(np.float64)
    doubt = np.nan_to_num(session.object_uncertainty(object_id), nan=0.0)
    present = np.flatnonzero(area > 0)
    outline = np.sqrt(area / area.max())  # an outline's length, relative (module doc)
    reach = outline.copy()
    for edge, step in ((present[0], -1), (present[-1], 1)):
        for offset in range(1, end_reach + 1):
            z = edge + step * offset
            if 0 <= z < depth and area[z] == 0:
                reach[z] = max(reach[z], 0.5 * outline[edge])
    weight = reach * (1.0 + doubt)
    scores = tent_sums(distance.astype(np.int64), weight)
    scores[(reach == 0) | np.isin(np.arange(depth), keys)] = 0.0  # candidates: the organ
    return scores


def tent_sums(half_widths: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(D,) float64 ``out[z] = sum_w weights[w] * max(0, half_widths[w] - |w - z|)`` for
    integer ``half_widths`` (D,) >= 0, in O(D): each ``w`` adds a tent whose second difference
    is ``+1, -2, +1`` at ``w - h, w, w + h``, and two running sums undo the differences (a
    (D, D) table of offsets took 14 ms per organ at 1000 slices, and the page asks for
    every organ's list at each status poll)."""
    depth = len(weights)
    where = np.arange(depth)
    pad = depth + 1  # a tent may start up to depth slices before slice 0
    size = 3 * depth + 3
    second = (np.bincount(where - half_widths + pad, weights, size)
              - 2 * np.bincount(where + pad, weights, size)
              + np.bincount(where + half_widths + pad, weights, size))
    return np.cumsum(np.cumsum(second))[depth:2 * depth]


def suggest_slices(session: PropagationSession, object_id: int | None = None, k: int = 8,
                   min_separation: int = 3) -> list[int]:
    """The ``k`` slices to check next for ``object_id`` (None: any organ), best first; only
    slices with a positive score (an organ with nothing left to check gives none)."""
    if object_id is None:
        return suggest_every_list(session, k, min_separation)[0]
    if object_id not in session.object_ids:
        return []
    return _ranked(session, organ_scores(session, object_id), k, min_separation)


def suggest_every_list(session: PropagationSession, k: int = 8, min_separation: int = 3
                       ) -> tuple[list[int], dict[int, list[int]]]:
    """:func:`suggest_slices` for any organ and for each organ (object id -> its list), from
    one computation of each organ's scores (what the page's status shows at every poll)."""
    per_organ = {obj: organ_scores(session, obj) for obj in session.object_ids}
    scores = np.zeros(session.depth)
    for own in per_organ.values():
        scores += own
    scores[session.any_key_slices] = 0.0
    return (_ranked(session, scores, k, min_separation),
            {obj: _ranked(session, own, k, min_separation) for obj, own in per_organ.items()})


def _ranked(session: PropagationSession, scores: np.ndarray, k: int, min_separation: int
            ) -> list[int]:
    scores = scores.copy()
    scores[~session.up_to_date] = np.nan
    return [z for z in uncertainty_ranking(scores, k=k, min_separation=min_separation)
            if scores[z] > 0]
