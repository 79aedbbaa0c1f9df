"""Filtering report: ``scores.csv`` and ``scores_histogram.png`` (drawn with OpenCV)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from os import PathLike

import cv2
import numpy as np

from slicevos.io.atomic import atomic_write_bytes
from slicevos.io.labels import LabelSchema
from slicevos.pseudo.filtering import Decision

CSV_FILE = "scores.csv"
HISTOGRAM_FILE = "scores_histogram.png"


def write_scores_csv(
    path: str | PathLike, decisions: Sequence[Decision], schema: LabelSchema
) -> None:
    """One row per case: case_id, score, accepted, partial, kept_classes (names joined by ';'),
    then one column per schema class (its consensus; empty where no member predicts it)."""
    columns = ["case_id", "score", "accepted", "partial", "kept_classes", *schema.names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for d in decisions:
        kept = ";".join(schema.by_id(c).name for c in d.class_ids)
        per_class = d.per_class or {}
        cells = [f"{per_class[c]:.6f}" if c in per_class else "" for c in schema.ids]
        flags = [int(d.accepted), int(d.partial)]
        writer.writerow([d.case_id, f"{d.score:.6f}", *flags, kept, *cells])
    atomic_write_bytes(path, buf.getvalue().encode())


def render_histogram(decisions: Sequence[Decision], cutoff: float | None, bins: int = 20,
                     size: tuple[int, int] = (420, 640)) -> np.ndarray:
    """Stacked histogram of volume scores on [0, 1] (accepted green on top of rejected grey,
    partial cases orange), with the cutoff as a red line. Returns BGR uint8 ``(H, W, 3)``."""
    height, width = size
    left, right, top, bottom = 50, 20, 40, 40
    img = np.full((height, width, 3), 255, np.uint8)
    groups = {"rejected": [d.score for d in decisions if not d.accepted],
              "partial": [d.score for d in decisions if d.accepted and d.partial],
              "accepted": [d.score for d in decisions if d.accepted and not d.partial]}
    colors = {"rejected": (160, 160, 160), "partial": (0, 140, 255), "accepted": (60, 170, 60)}
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = {k: np.histogram(np.clip(v, 0, 1), edges)[0] for k, v in groups.items()}
    peak = max(1, int(sum(counts.values()).max(initial=0)))
    plot_w, plot_h = width - left - right, height - top - bottom
    bar_w = plot_w / bins
    for i in range(bins):
        base = 0
        for name in ("rejected", "partial", "accepted"):
            n = int(counts[name][i])
            if n:
                y0 = top + plot_h - int(round((base + n) / peak * plot_h))
                y1 = top + plot_h - int(round(base / peak * plot_h))
                x0, x1 = left + int(i * bar_w) + 1, left + int((i + 1) * bar_w) - 1
                cv2.rectangle(img, (x0, y0), (x1, y1), colors[name], thickness=-1)
            base += n
    black, font = (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    cv2.line(img, (left, top + plot_h), (left + plot_w, top + plot_h), black, 1)
    cv2.line(img, (left, top), (left, top + plot_h), black, 1)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + int(tick * plot_w)
        cv2.putText(img, f"{tick:g}", (x - 10, height - bottom + 18), font, 0.4, black, 1)
    cv2.putText(img, str(peak), (5, top + 5), font, 0.4, black, 1)
    cv2.putText(img, "0", (30, top + plot_h), font, 0.4, black, 1)
    title = (f"consensus score: {len(decisions)} cases, {len(groups['accepted'])} accepted, "
             f"{len(groups['partial'])} partial")
    if cutoff is not None:
        x = left + int(np.clip(cutoff, 0, 1) * plot_w)
        cv2.line(img, (x, top), (x, top + plot_h), (0, 0, 230), 2)
        title += f", cutoff {cutoff:.3f}"
    cv2.putText(img, title, (left, 18), font, 0.45, black, 1)
    for i, name in enumerate(("accepted", "partial", "rejected")):
        cv2.putText(img, name, (left + 90 * i, 34), font, 0.4, colors[name], 1)
    return img


def write_histogram(
    path: str | PathLike, decisions: Sequence[Decision], cutoff: float | None
) -> None:
    """Write :func:`render_histogram` as PNG (atomic)."""
    ok, png = cv2.imencode(".png", render_histogram(decisions, cutoff))
    if not ok:
        raise RuntimeError("OpenCV could not encode the histogram PNG")
    atomic_write_bytes(path, png.tobytes())
