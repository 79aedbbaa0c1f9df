"""Ensemble members for pseudo-labeling: each predicts a whole volume's labels.

A member is any object with a ``name``, an ``identity()`` (JSON-ready: what makes its output
what it is, checked before a rerun reuses a case) and ``predict(volume) -> uint8 (D, H, W)``
on the canonical grid. ``ReferenceMember`` runs a reference checkpoint (CPS pair) over every
slice, optionally on flipped slices (TTA). ``PipelineMember`` runs the whole pipeline
(reference key slices + STCN or optical-flow propagation, ``slicevos.inference.pipeline``).

TTA flips act on the windowed slices (D, C, H, W): ``flip_lr`` mirrors columns (patient right
<-> left), ``flip_ud`` rows (anterior <-> posterior). The prediction is flipped back. A
left-right mirror turns the patient's right kidney into a left kidney, so after ``flip_lr`` the
paired classes ``right_X`` / ``left_X`` of the schema swap ids back.

TTA position transforms (``POSITION_TTA``) keep the images and change the relative slice
position the networks are conditioned on: ``p' = offset + scale * p`` with p = z / (D - 1).
``pos_shift_up`` (0.15, 0.85) reads the scan as the upper 85 % of a longer one (it extended
further down), ``pos_shift_down`` (0, 0.85) as the lower 85 %, ``pos_none`` (0.5, 0) gives
every slice 0.5. On a full-range scan a network that uses position only a little changes
little; on a scan truncated in z, where every member gets the same wrong positions, members
under different position assumptions disagree, which the consensus can see.

``network`` picks what a member runs of the pair: ``"pair"`` (both networks, mean softmax),
``"a"`` (TransUNet) or ``"b"`` (DeepLabV3+) alone, so one checkpoint gives two different
models as members (the paper's consensus is over different models).
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from slicevos.data.dataset_folder import source_fingerprint
from slicevos.errors import InputError
from slicevos.inference.reference.segmenter import ReferenceSegmenter
from slicevos.inference.reference.tta import mirrored_class_order
from slicevos.io.volume import Volume
from slicevos.preprocessing.position import relative_position
from slicevos.preprocessing.windowing import window_volume

FLIP_AXES = {"flip_lr": -1, "flip_ud": -2}  # axis of (..., H, W)
POSITION_TTA = {"pos_shift_up": (0.15, 0.85), "pos_shift_down": (0.0, 0.85),
                "pos_none": (0.5, 0.0)}  # name -> (offset, scale): p' = offset + scale * p
TTA_CHOICES = (*FLIP_AXES, *POSITION_TTA)
NETWORKS = ("pair", "a", "b")


class Member(Protocol):
    name: str

    def identity(self) -> dict[str, Any]:
        """JSON-ready description, ``{"name": ..., ...}``; equal identities give equal labels."""

    def predict(self, volume: Volume) -> np.ndarray:
        """Canonical volume -> uint8 (D, H, W) labels."""


class OneNetwork(torch.nn.Module):
    """One network of a CPS pair (``"a"`` or ``"b"``) with the pair's output stride."""

    def __init__(self, pair: torch.nn.Module, network: str) -> None:
        super().__init__()
        self.net = pair.net_a if network == "a" else pair.net_b
        self.output_stride = int(pair.output_stride)

    def forward(self, images: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images, positions)


def network_segmenter(pair_segmenter: ReferenceSegmenter, network: str) -> ReferenceSegmenter:
    """A segmenter running ``network`` ("pair", "a" or "b") of a checkpoint's CPS pair; the
    weights are shared with ``pair_segmenter``."""
    if network not in NETWORKS:
        raise InputError(None, f"unknown network {network!r}", f"use one of {list(NETWORKS)}")
    if network == "pair":
        return pair_segmenter
    seg = ReferenceSegmenter(OneNetwork(pair_segmenter.model, network), pair_segmenter.device,
                             pair_segmenter.batch_size, pair_segmenter.amp_dtype)
    seg.info, seg.model_spacing_mm = pair_segmenter.info, pair_segmenter.model_spacing_mm
    return seg


def uses_position(model: torch.nn.Module) -> bool:
    """Whether a CPS pair conditions on the slice position (either network has its position
    module); True when it cannot tell (e.g. an onnxruntime graph)."""
    nets = [getattr(model, name, None) for name in ("net_a", "net_b")]
    if any(net is None or not hasattr(net, "position") for net in nets):
        return True
    return any(net.position is not None for net in nets)


class ReferenceMember:
    """A reference checkpoint (CPS pair, mean of both softmaxes, or one of its networks) as an
    ensemble member, optionally on flipped slices (``flip``) or under transformed slice
    positions (``position``, a name of ``POSITION_TTA``)."""

    def __init__(self, segmenter: ReferenceSegmenter, name: str, flip: str | None = None,
                 network: str = "pair", position: str | None = None) -> None:
        if segmenter.info is None:
            raise ValueError("segmenter must come from ReferenceSegmenter.from_checkpoint")
        if flip is not None and flip not in FLIP_AXES:
            raise InputError(None, f"unknown TTA flip {flip!r}", f"use one of {sorted(FLIP_AXES)}")
        if position is not None and position not in POSITION_TTA:
            raise InputError(None, f"unknown TTA position transform {position!r}",
                             f"use one of {sorted(POSITION_TTA)}")
        self.segmenter, self.name, self.flip = network_segmenter(segmenter, network), name, flip
        self.network, self.position = network, position
        self._lut = (mirrored_class_order(segmenter.info.schema, 256).astype(np.uint8)
                     if flip == "flip_lr" else None)  # label id -> id with right/left swapped

    def identity(self) -> dict[str, Any]:
        path = self.segmenter.info.path
        identity = {"name": self.name, "type": "reference", "flip": self.flip,
                    "checkpoint": str(path.absolute()), "fingerprint": source_fingerprint(path)}
        if self.network != "pair":  # pair members keep the identity they always had
            identity["network"] = self.network
        if self.position is not None:  # members without one keep their old identity
            offset, scale = POSITION_TTA[self.position]
            identity["position"] = {"tta": self.position, "offset": offset, "scale": scale}
        return identity

    def positions(self, depth: int) -> np.ndarray:
        """The relative slice positions this member feeds the networks for ``depth`` slices."""
        positions = relative_position(np.arange(depth), depth)
        if self.position is None:
            return positions
        offset, scale = POSITION_TTA[self.position]
        return (np.float32(offset) + np.float32(scale) * positions).astype(np.float32)

    def predict(self, volume: Volume) -> np.ndarray:
        images = window_volume(volume.hu, self.segmenter.info.windows)  # (D, C, H, W)
        if self.flip is not None:
            images = np.ascontiguousarray(np.flip(images, FLIP_AXES[self.flip]))
        depth = volume.num_slices
        self.segmenter.input_spacing = tuple(volume.spacing[1:])
        labels = self.segmenter.segment(images, self.positions(depth))
        if self.flip is not None:
            labels = np.ascontiguousarray(np.flip(labels, FLIP_AXES[self.flip]))
        return labels if self._lut is None else self._lut[labels]


def reference_members(checkpoints: Sequence[str | PathLike], tta: Sequence[str] = (),
                      device: str | torch.device = "cpu", batch_size: int = 8,
                      amp_dtype: torch.dtype | None = None,
                      networks: Sequence[str] = ("pair",)) -> list[ReferenceMember]:
    """Per checkpoint i and network n of ``networks``: member ``ckpt<i>`` (n = "pair") or
    ``ckpt<i>.<n>``, plus ``<that>+<tta>`` per TTA entry: a flip (``FLIP_AXES``) or a position
    transform (``POSITION_TTA``) (one model in memory per checkpoint). All checkpoints must
    share one label schema."""
    unknown = [t for t in tta if t not in TTA_CHOICES]
    if unknown:
        raise InputError(None, f"unknown TTA {unknown}", f"use any of {list(TTA_CHOICES)}")
    members: list[ReferenceMember] = []
    schema = None
    for i, path in enumerate(checkpoints):
        segmenter = ReferenceSegmenter.from_checkpoint(path, device, batch_size, amp_dtype)
        if schema is not None and segmenter.info.schema != schema:
            raise InputError(path, f"schema {segmenter.info.schema.name} differs from the first "
                             f"checkpoint's {schema.name}", "use checkpoints of one label schema")
        schema = segmenter.info.schema
        # a position transform on networks that ignore the position would only repeat a member
        kept = [t for t in tta if t not in POSITION_TTA or uses_position(segmenter.model)]
        for network in networks:
            name = f"ckpt{i}" if network == "pair" else f"ckpt{i}.{network}"
            members.append(ReferenceMember(segmenter, name, network=network))
            members += [ReferenceMember(segmenter, f"{name}+{t}", t if t in FLIP_AXES else None,
                                        network, t if t in POSITION_TTA else None)
                        for t in kept]
    return members


class PipelineMember:
    """The full pipeline as an ensemble member: a reference checkpoint's key slices, filled by
    one propagation ``engine`` ("stcn" with a ``propagation`` checkpoint, "flow" without)."""

    def __init__(self, reference: str | PathLike, engine: str, name: str,
                 propagation: str | PathLike | None = None,
                 device: str | torch.device = "cpu") -> None:
        from slicevos.inference.config import InferenceConfig
        from slicevos.inference.pipeline import VolumePipeline

        config = InferenceConfig(propagator=engine)
        self.pipeline = VolumePipeline.from_checkpoints(
            propagation if engine != "flow" else None, reference, config=config,
            device=str(torch.device(device)))
        self.name, self.engine = name, engine
        self.paths = {"reference": Path(reference)}
        if engine != "flow" and propagation is not None:
            self.paths["propagation"] = Path(propagation)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "type": "pipeline", "engine": self.engine,
                **{k: str(p.absolute()) for k, p in self.paths.items()},
                **{f"{k}_fingerprint": source_fingerprint(p) for k, p in self.paths.items()}}

    def predict(self, volume: Volume) -> np.ndarray:
        return self.pipeline.run(volume).labels


def pipeline_members(checkpoints: Sequence[str | PathLike], engines: Sequence[str],
                     propagation: str | PathLike | None = None,
                     device: str | torch.device = "cpu") -> list[PipelineMember]:
    """Member ``ckpt<i>.<engine>`` per reference checkpoint and engine (the same keys filled
    by each engine; names match :func:`reference_members`)."""
    return [PipelineMember(path, engine, f"ckpt{i}.{engine}", propagation, device)
            for i, path in enumerate(checkpoints) for engine in engines]


def predict_members(volume: Volume, members: Sequence[Member]) -> np.ndarray:
    """Every member's labels of one volume: uint8 (M, D, H, W), in ``members`` order."""
    return np.stack([m.predict(volume) for m in members]).astype(np.uint8, copy=False)
