"""Augmentation of training slices: an albumentations pipeline built from a YAML / dict spec.

A spec is a list of entries ``{name: <albumentations class>, p: <probability>, **arguments}``,
or a mapping ``{transforms: [...]}`` (the form of ``configs/augment/default.yaml``), or the path
of a YAML file holding either. An entry with ``transforms`` (``OneOf``, ``SomeOf``,
``Sequential``) nests. Unknown names or arguments raise ``InputError``.

Geometric transforms move image and labels together (labels with nearest-neighbour
interpolation). Each call takes an integer seed that fixes every random draw of the pipeline,
so a sample is a pure function of its seed. Transforms that mirror left and right
(``HorizontalFlip``, ``Transpose``, ``D4``, ``SquareSymmetry``) draw a warning: image columns
run patient right -> left and the right and left kidneys and adrenal glands are different
classes, so a mirrored slice teaches the network that a right kidney can lie on the left.
"""

from __future__ import annotations

import difflib
import os
import random
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch.utils.data import Dataset

from slicevos.errors import InputError, warn_input

AugmentSpec = str | PathLike | Sequence[Mapping[str, Any]] | Mapping[str, Any] | None
MIRRORING = frozenset({"HorizontalFlip", "Transpose", "D4", "SquareSymmetry"})


def _albumentations() -> Any:
    # albumentations asks PyPI for a newer version at import unless told not to; training hosts
    # are often offline, and a tool should not phone home.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def load_augment_spec(spec: AugmentSpec) -> tuple[list[Mapping[str, Any]], str]:
    """The list of transform entries of ``spec`` and where it came from (for error messages)."""
    where = "augment"
    if isinstance(spec, str | PathLike):
        path = Path(spec)
        if not path.is_file():
            raise InputError(path, "augmentation spec not found",
                             "check the path (configs/augment/default.yaml is an example)")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise InputError(path, f"invalid YAML ({err})".replace("\n", " "),
                             "fix the syntax") from None
        where = str(path)
    if spec is None:
        return [], where
    if isinstance(spec, Mapping):
        if set(spec) != {"transforms"}:
            raise InputError(where, f"expected a list of transforms or {{transforms: [...]}}, got "
                             f"keys {sorted(spec)}", "put the entries under 'transforms:'")
        spec = spec["transforms"] or []
    if isinstance(spec, str | bytes) or not isinstance(spec, Sequence):
        raise InputError(where, f"expected a list of transforms, got {type(spec).__name__}",
                         "write e.g. [{name: Affine, p: 0.5, rotate: [-15, 15]}]")
    return list(spec), where


def _build_entry(entry: Any, where: str) -> Any:
    A = _albumentations()
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise InputError(where, f"transform entry {entry!r} has no 'name'",
                         "write e.g. {name: Affine, p: 0.5, rotate: [-15, 15]}")
    params = dict(entry)
    name = params.pop("name")
    cls = getattr(A, name, None)
    if not isinstance(cls, type) or not issubclass(cls, A.BasicTransform | A.BaseCompose):
        close = difflib.get_close_matches(name, [n for n in dir(A) if n[:1].isupper()], n=3)
        raise InputError(where, f"unknown albumentations transform {name!r}"
                         + (f" (did you mean {', '.join(close)}?)" if close else ""),
                         f"use a class name of albumentations {A.__version__}, e.g. Affine, "
                         "RandomBrightnessContrast, GaussNoise, ElasticTransform, OneOf")
    if name in MIRRORING:
        warn_input(where, f"{name} mirrors left and right, but left and right organs have "
                   "different labels (kidneys, adrenal glands)", "drop it unless you remap labels")
    try:
        if issubclass(cls, A.BaseCompose):
            children = [_build_entry(e, where) for e in params.pop("transforms", None) or []]
            return cls(children, **params)
        return cls(**params, strict=True)
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split())
        raise InputError(where, f"bad arguments for {name}: {message[:400]}",
                         f"see help(albumentations.{name})") from None


def build_augmentation(spec: AugmentSpec) -> Any | None:
    """``albumentations.Compose`` of the spec's transforms, or None for an empty spec."""
    entries, where = load_augment_spec(spec)
    if not entries:
        return None
    return _albumentations().Compose([_build_entry(e, where) for e in entries])


def augment_slice(pipeline: Any | None, image: np.ndarray, labels: np.ndarray | None,
                  seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``pipeline`` to one slice: image uint8 (C, H, W), labels uint8 (H, W) or None.

    Every random draw comes from ``seed``. Returns arrays in the same layout; the size may
    change if the pipeline resizes or crops. ``pipeline`` None returns the inputs unchanged.
    """
    if pipeline is None:
        return image, labels
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    data = {"image": np.ascontiguousarray(np.moveaxis(image, 0, -1))}
    if labels is not None:
        data["mask"] = np.ascontiguousarray(labels)
    out = pipeline(**data)
    out_image = out["image"]
    if out_image.ndim == 2:
        out_image = out_image[..., None]
    return np.moveaxis(out_image, -1, 0), out.get("mask") if labels is not None else None


class AugmentedDataset(Dataset):
    """A ``Dataset`` whose albumentations pipeline is built from ``self.config.augment`` (when
    ``self.augment``, default True) and rebuilt after unpickling, since pipelines do not
    pickle into ``DataLoader`` worker processes. Subclasses call :meth:`_init_augmentation`."""

    augment: bool = True

    def _init_augmentation(self) -> None:
        self._pipeline = build_augmentation(self.config.augment) if self.augment else None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pipeline": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_augmentation()
