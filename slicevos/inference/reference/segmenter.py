"""Slice segmentation with a CPS pair (or any model with ``predict_proba``) in batches.

``ReferenceSegmenter.probabilities`` returns the mean of the two networks' softmax
probabilities, (N, K, H, W) float32 summing to 1 over K; ``segment`` its argmax as uint8.
Slices of any size are padded to the model's stride and cropped back. A model trained at a fixed
in-plane spacing (``ReferenceModelInfo.spacing_mm``, the training config's ``data.spacing_mm``)
sees every slice resampled to that spacing, given the slices' own spacing
(``ReferenceSegmenter.input_spacing``); its probabilities are resampled back to the slice grid.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from slicevos.config import from_dict
from slicevos.errors import InputError, warn_input
from slicevos.inference.checkpoints import build_and_load, load_with_windows
from slicevos.inference.reporting.uncertainty import label_disagreement
from slicevos.io.labels import LabelSchema, get_schema
from slicevos.models.reference.cps import CPSConfig, CPSPair, build_cps_pair
from slicevos.preprocessing.padding import crop_to, pad_to_multiple
from slicevos.preprocessing.spacing import resampled_size
from slicevos.preprocessing.windowing import Window

BACKENDS = ("auto", "torch", "onnx")


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(1)`` for (N, K, H, W): the same indices (the first of tied maxima), got
    through ``max``, which is several times faster on the CPU for the class axis of NCHW."""
    return scores.max(1).indices


@dataclass
class SlicePrediction:
    """Per-slice outputs: ``labels`` (N, H, W) uint8, ``probabilities`` (N, K, H, W) float32 or
    None, ``disagreement`` (N,) float32: :func:`label_disagreement` of the two networks'
    argmax (0 when the model is a single network)."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    disagreement: np.ndarray


@dataclass(frozen=True)
class ReferenceModelInfo:
    """What a reference checkpoint says about its inputs and outputs."""

    schema: LabelSchema
    windows: tuple[Window, ...]
    path: Path | None = None
    spacing_mm: float | None = None  # in-plane pixel size the networks were trained at


def load_reference_pair(path: str | PathLike, device: str | torch.device = "cpu"
                        ) -> tuple[CPSPair, ReferenceModelInfo]:
    """Rebuild the CPS pair from a reference checkpoint alone (its config and weights)."""
    payload, windows = load_with_windows(path, "reference_cps", "slicevos-train-reference")
    schema = get_schema(payload["config"]["schema"])
    config = from_dict(CPSConfig, payload["config"]["model"], str(path))
    pair = build_and_load(path, lambda: build_cps_pair(config, schema.num_classes, len(windows)),
                          payload["model"], "slicevos-train-reference")
    spacing = (payload["config"].get("data") or {}).get("spacing_mm")
    return pair.to(device).eval(), ReferenceModelInfo(
        schema, windows, Path(path), None if spacing is None else float(spacing))


def onnx_installed() -> bool:
    """Whether the ``onnx`` extra (onnxruntime and the exporter's onnxscript) is installed."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("onnxruntime", "onnxscript", "onnx"))


def _onnx_pair(path: str | PathLike, fallback: tuple | None = None) -> tuple:
    """The onnxruntime model and info of a reference checkpoint or graph; when the export
    fails, ``fallback`` (the torch pair and its info) with a warning, if given."""
    from slicevos.inference.onnx.runtime import load_onnx_reference, reference_onnx_path

    try:
        model, info = load_onnx_reference(reference_onnx_path(path, loaded=fallback))
    except InputError as err:
        if fallback is None:
            raise
        warn_input(path, f"the onnx backend is unavailable ({err.problem}); running PyTorch",
                   "pass --backend torch to skip the attempt")
        return fallback
    return model, replace(info, path=Path(path))


def resample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to ``size``, antialiased when shrinking (as cv2's area
    resize in training is)."""
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear",
                                           align_corners=False, antialias=shrink)


def _to_slice_grid(logits: torch.Tensor, model_grid: tuple[int, int],
                   slice_grid: tuple[int, int]) -> torch.Tensor:
    """Softmax of padded logits, cropped to the grid the model saw, resampled to the slice's."""
    prob = crop_to(logits.float().softmax(1), *model_grid)
    return prob if model_grid == slice_grid else resample(prob, slice_grid)


class ReferenceSegmenter:
    """Runs a reference model over uint8 windowed slices.

    ``model`` must offer ``forward(images, positions) -> (logits_a, logits_b)`` (a CPS pair)
    or ``-> logits``, plus ``output_stride``. Input images are uint8 (N, C, H, W); positions are
    relative slice positions z / (D - 1) in [0, 1].
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu",
                 batch_size: int = 8, amp_dtype: torch.dtype | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.amp_dtype = amp_dtype if self.device.type == "cuda" else None
        self.stride = int(getattr(model, "output_stride", 1))
        self.info: ReferenceModelInfo | None = None
        self.model_spacing_mm: float | None = None  # the networks' training pixel size
        self.input_spacing: tuple[float, float] | None = None  # (dy, dx) mm of the slices given

    def _model_size(self, height: int, width: int) -> tuple[int, int] | None:
        """(h, w) the slices are resampled to before the networks see them, or None (as is)."""
        if self.input_spacing is None:
            return None
        return resampled_size((height, width), self.input_spacing, self.model_spacing_mm)

    @classmethod
    def from_checkpoint(cls, path: str | PathLike, device: str | torch.device = "cpu",
                        batch_size: int = 8, amp_dtype: torch.dtype | None = None,
                        backend: str = "torch") -> ReferenceSegmenter:
        """A segmenter for a reference checkpoint; ``.info`` holds its schema and windows.
        ``backend``: ``torch``; ``onnx`` runs the pair with onnxruntime on the CPU (a ``.onnx``
        file from ``slicevos-export`` always does; a ``.pt`` checkpoint is exported once to a
        cache, ``slicevos.inference.onnx.runtime``); ``auto`` is onnx on the CPU when the
        ``onnx`` extra is installed (falling back to torch, with a warning, if the export
        fails), else torch."""
        if backend not in BACKENDS:
            raise InputError(path, f"unknown reference backend {backend!r}",
                             f"use one of {BACKENDS}")
        if Path(path).suffix == ".onnx" or backend == "onnx":
            pair, info = _onnx_pair(path)
        else:
            pair, info = load_reference_pair(path, device)  # checks the checkpoint first
            if (backend == "auto" and torch.device(device).type == "cpu"
                    and onnx_installed()):
                pair, info = _onnx_pair(path, fallback=(pair, info))
        segmenter = cls(pair, device, batch_size, amp_dtype)
        segmenter.info, segmenter.model_spacing_mm = info, info.spacing_mm
        return segmenter

    def _batches(self, images: np.ndarray, positions: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(images), self.batch_size):
            chunk = torch.from_numpy(np.array(images[start:start + self.batch_size]))  # copy: memmaps are read-only
            pos = torch.as_tensor(positions[start:start + self.batch_size], dtype=torch.float32)
            yield chunk.to(self.device).float().div_(255.0), pos.to(self.device)

    @torch.no_grad()
    def predict(self, images: np.ndarray, positions: np.ndarray,
                keep_probabilities: bool = False) -> SlicePrediction:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, C, H, W) slices, got {images.dtype} {images.shape}")
        if len(positions) != len(images):
            raise ValueError(f"{len(images)} slices but {len(positions)} positions")
        height, width = images.shape[-2:]
        model_size = self._model_size(height, width)
        labels, probs, disagreement = [], [], []
        for batch, pos in self._batches(images, positions):
            if model_size is not None:
                batch = resample(batch, model_size)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                out = self.model(pad_to_multiple(batch, self.stride), pos)
            logits = out if isinstance(out, torch.Tensor) else tuple(out)
            model_grid = tuple(batch.shape[-2:])
            if isinstance(logits, torch.Tensor):
                mean_prob = _to_slice_grid(logits, model_grid, (height, width))
                disagree = torch.zeros(len(batch), device=self.device)
            else:
                prob_a, prob_b = (_to_slice_grid(net, model_grid, (height, width))
                                  for net in logits)
                mean_prob = (prob_a + prob_b) / 2
                disagree = label_disagreement(class_argmax(prob_a), class_argmax(prob_b))
            labels.append(class_argmax(mean_prob).to(torch.uint8).cpu().numpy())
            disagreement.append(disagree.cpu().numpy())
            if keep_probabilities:
                probs.append(mean_prob.cpu().numpy())
        return SlicePrediction(
            labels=np.concatenate(labels),
            probabilities=np.concatenate(probs) if keep_probabilities else None,
            disagreement=np.concatenate(disagreement).astype(np.float32),
        )

    def segment(self, images: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) slices -> uint8 (N, H, W) labels."""
        return self.predict(images, positions).labels
