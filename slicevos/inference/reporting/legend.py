"""The legend of a preview: one colour swatch and name per class present, laid out in columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

_FONT, _SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.4
_SWATCH, _ROW_H, _PAD = 12, 18, 6


class LegendEntry(NamedTuple):
    """A class shown in the preview: id, display name and RGB colour."""

    class_id: int
    name: str
    colour: tuple[int, int, int]


def legend_image(entries: Sequence[LegendEntry], width: int) -> np.ndarray:
    """RGB uint8 (h, ``width``) legend: a ``_SWATCH`` px square of each entry's colour and its
    ``id name`` in white, in as many columns as fit; "no labels" when ``entries`` is empty."""
    texts = [f"{e.class_id} {e.name}" for e in entries] or ["no labels"]
    text_w = max(cv2.getTextSize(t, _FONT, _SCALE, 1)[0][0] for t in texts)
    cell_w = _SWATCH + 4 + text_w + 2 * _PAD
    width = max(int(width), cell_w)
    columns = max(1, width // cell_w)
    rows = -(-len(texts) // columns)
    out = np.zeros((rows * _ROW_H + _PAD, width, 3), np.uint8)
    for i, text in enumerate(texts):
        left, top = _PAD + (i % columns) * cell_w, _PAD // 2 + (i // columns) * _ROW_H
        if entries:
            out[top + 2:top + 2 + _SWATCH, left:left + _SWATCH] = entries[i].colour
        cv2.putText(out, text, (left + _SWATCH + 4, top + _SWATCH), _FONT, _SCALE,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out
