"""Post-processing of label volumes: per-class 3D connected-component rules.

The rule of each class comes from its label schema (``LabelClass.one_piece``):

- a *one-piece* class (liver, kidneys, spleen, ...) keeps its largest 3D component and every
  component that holds pixels a person drew (``drawn``); its other, stray parts are removed;
- every other class (tumors, vessels, tubes, thin curved organs, the ``objects`` schema) keeps
  all of its parts.

What a person drew is never removed, nor anything connected to it: a component that overlaps
one drawn pixel of its class is kept whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import cc3d
import numpy as np

from slicevos.io.labels import LabelSchema


def clean_components(labels: np.ndarray, schema: LabelSchema,
                     drawn: Mapping[int, np.ndarray] | None = None,
                     connectivity: int = 26) -> np.ndarray:
    """Apply the schema's component rules (see the module doc) to ``labels`` uint8 (D, H, W).

    ``drawn``: {z: (H, W) labels} of the slices a person drew (semi-automatic keys); their
    components are kept. ``connectivity`` is 6, 18 or 26 (3D). Returns a new array; classes
    not in ``schema`` are kept as they are.
    """
    one_piece = [c.id for c in schema.classes if c.one_piece]
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[1:]) + 1
    if not np.isin(present, one_piece).any():
        return labels.copy()
    # one pass labels every class: a component never spans two label values
    components = cc3d.connected_components(labels, connectivity=connectivity)
    counts = np.bincount(components.ravel())
    component_class = np.zeros(len(counts), np.int64)
    component_class[components.ravel()] = labels.ravel()
    keep = np.ones(len(counts), bool)
    keep[0] = False
    for class_id in np.intersect1d(present, one_piece):
        members = np.flatnonzero(component_class == class_id)
        members = members[members > 0]
        keep[members] = False
        keep[members[np.argmax(counts[members])]] = True
    for z, mask in (drawn or {}).items():
        on_drawn = components[z][(mask > 0) & (mask == labels[z])]
        keep[on_drawn] = True
    return np.where(keep[components], labels, 0).astype(labels.dtype)
