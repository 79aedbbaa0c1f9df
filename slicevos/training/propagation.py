"""Propagation-module training: STCN on 3-slice clips, per-object or joint mode.

Each step draws a clip batch (frame 0's masks given, frames 1..T-1 predicted from memory) and
optimises bootstrapped cross entropy (OHEM: the hardest ``ratio(step)`` of pixels, decaying as
in STCN) + Lovasz-softmax on the logits of every predicted frame. What the network is given and
scored on depends on ``model.object_mode`` (a :class:`ClipObjective`):

- ``per_object``: frame 0's masks of the clip's 1..``max_objects`` sampled objects; targets are
  the object slots (0 background, o + 1 slot o) of the aggregated logits; padding object slots
  are masked out of the logits. Validation: mean Jaccard (IoU) over the valid objects of every
  validation clip (each object's IoU over the clip's predicted frames).
- ``joint``: frame 0's label map (``ClipBatch.labels``: every class, or only the sampled
  objects with ``data.label_classes: objects``) as a one-hot class mask (B, K, H, W), K = the
  cache's ``schema.num_classes`` (``model.num_classes`` is replaced by it); targets are the
  class ids of frames 1..T-1. The class-agnostic "objects" schema (256 ids) is refused, and so is a cache
  label id >= K. Validation: mean IoU over the foreground classes present in the target or
  the prediction of each validation clip (over its predicted frames; background left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slicevos.data.cache import INDEX_FILE
from slicevos.data.clips import ClipBatch, ClipData, ClipDataConfig
from slicevos.errors import InputError
from slicevos.io.labels import OBJECTS, LabelSchema
from slicevos.losses import LovaszSoftmaxLoss, OhemCrossEntropy
from slicevos.models.propagation import ClipOutput, PropagationModelConfig, PropagationNet
from slicevos.training.config import TrainConfig
from slicevos.training.trainer import Trainer

PADDING_LOGIT = -1e4


@dataclass(frozen=True)
class PropagationLossConfig:
    """OHEM keeps all pixels until ``ohem_warmup_start`` and decays linearly to
    ``ohem_top_ratio`` at ``ohem_warmup_end`` (STCN: 20k -> 70k); Lovasz-softmax is added with
    ``lovasz_weight``."""

    ohem_top_ratio: float = 0.15
    ohem_warmup_start: int = 0
    ohem_warmup_end: int = 0
    lovasz_weight: float = 1.0


@dataclass(frozen=True)
class PropagationValidationConfig:
    batches: int = 4
    batch_size: int = 8


@dataclass(frozen=True)
class PropagationConfig:
    data: ClipDataConfig
    model: PropagationModelConfig = field(default_factory=PropagationModelConfig)
    loss: PropagationLossConfig = field(default_factory=PropagationLossConfig)
    validation: PropagationValidationConfig = field(default_factory=PropagationValidationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def mask_padding_slots(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """logits (B, T, O + 1, H, W), valid (B, O): padding objects get a very low logit."""
    keep = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # background always kept
    return logits.masked_fill(~keep[:, None, :, None, None], PADDING_LOGIT)


class ClipObjective:
    """per_object mode: what the network is given for frame 0 and trained against (see the
    module doc). :class:`JointObjective` is the joint-mode variant."""

    num_classes: int | None = None  # None: the network's classes come from the config

    def first_masks(self, batch: ClipBatch) -> torch.Tensor:
        """Frame 0's masks: (B, O, H, W) object slots."""
        return batch.masks[:, 0]

    def priors(self, batch: ClipBatch) -> torch.Tensor | None:
        """The flow priors of frames 1..T-1 in the network's layout: (B, T-1, O, H, W) object
        slots (None without ``data.flow_prior``)."""
        return batch.priors

    def logits(self, out: ClipOutput, batch: ClipBatch) -> torch.Tensor:
        """Training logits (B, T-1, L, H, W) float32 (L = O + 1, padding slots masked)."""
        return mask_padding_slots(out.logits.float(), batch.valid)

    def targets(self, batch: ClipBatch) -> torch.Tensor:
        """int64 (B, T-1, H, W) ids of the ``logits`` channels for frames 1..T-1."""
        return batch.targets()[:, 1:]

    def scored(self, batch: ClipBatch, pred: torch.Tensor, targets: torch.Tensor
               ) -> list[tuple[int, int]]:
        """(clip, channel id) pairs the validation IoU averages over: every valid object."""
        return [(b, o + 1) for b, o in torch.nonzero(batch.valid).tolist()]


class JointObjective(ClipObjective):
    """joint mode: one-hot class masks of frame 0 in, class logits out; ``num_classes`` K from
    the cache's schema (``index_path`` names the cache in errors)."""

    def __init__(self, schema: LabelSchema, index_path: Path, prior_clip: float = 24.0
                 ) -> None:
        if schema.name == OBJECTS.name:
            raise InputError(index_path, f"schema {OBJECTS.name!r} is class-agnostic ("
                             f"{OBJECTS.num_classes} arbitrary ids), joint mode needs a fixed "
                             "class set", "train joint mode on a cache built with a class "
                             "schema (slicevos-prepare-data --schema flare22), or set "
                             "model.object_mode: per_object")
        self.schema, self.num_classes, self.index_path = schema, schema.num_classes, index_path
        self.prior_clip = prior_clip

    def _labels(self, batch: ClipBatch) -> torch.Tensor:
        bad = batch.labels.flatten(1).amax(1) >= self.num_classes
        if bad.any():
            b = int(torch.nonzero(bad)[0, 0])
            raise InputError(self.index_path, f"case {batch.keys[b].case_id!r} holds label id "
                             f"{int(batch.labels[b].max())}, outside the {self.num_classes} "
                             f"classes of schema {self.schema.name!r} (joint mode)",
                             "rebuild the cache with slicevos-prepare-data and the schema of "
                             "its labels, or set model.object_mode: per_object")
        return batch.labels

    def first_masks(self, batch: ClipBatch) -> torch.Tensor:
        """Frame 0's one-hot class masks (B, K, H, W) float32."""
        one_hot = F.one_hot(self._labels(batch)[:, 0], self.num_classes)
        return one_hot.permute(0, 3, 1, 2).to(batch.images.dtype)

    def priors(self, batch: ClipBatch) -> torch.Tensor | None:
        """Slot priors -> (B, T-1, K, H, W) class priors: background 0 (the flow engine's
        background score), each sampled object's class its slot, other classes the clip
        value (far outside)."""
        if batch.priors is None:
            return None
        slots = batch.priors
        classes = torch.full((*slots.shape[:2], self.num_classes, *slots.shape[3:]),
                             -self.prior_clip, dtype=slots.dtype, device=slots.device)
        classes[:, :, 0] = 0.0
        for b, o in torch.nonzero(batch.valid).tolist():
            classes[b, :, int(batch.object_ids[b, o])] = slots[b, :, o]
        return classes

    def logits(self, out: ClipOutput, batch: ClipBatch) -> torch.Tensor:
        return out.logits.float()

    def targets(self, batch: ClipBatch) -> torch.Tensor:
        return self._labels(batch)[:, 1:]

    def scored(self, batch: ClipBatch, pred: torch.Tensor, targets: torch.Tensor
               ) -> list[tuple[int, int]]:
        """Every foreground class present in a clip's target or prediction."""
        return [(b, c) for b in range(len(batch))
                for c in torch.cat([targets[b].unique(), pred[b].unique()]).unique().tolist()
                if c > 0]


class PropagationTrainer(Trainer):
    kind = "propagation"

    def __init__(self, config: PropagationConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.data = ClipData(replace(config.data, flow_prior=config.model.prior_input),
                             rank=self.dist.rank)
        self.objective = (JointObjective(self.data.cache.schema,
                                         self.data.cache.root / INDEX_FILE,
                                         config.data.prior_clip)
                          if config.model.object_mode == "joint" else ClipObjective())
        loss = config.loss
        self.ohem = OhemCrossEntropy(loss.ohem_top_ratio, loss.ohem_warmup_start,
                                     loss.ohem_warmup_end)
        self.lovasz = LovaszSoftmaxLoss(classes="present")

    @property
    def num_classes(self) -> int:
        """Classes of the network: the cache schema's in joint mode, else the config's."""
        return self.objective.num_classes or self.config.model.num_classes

    def build_model(self) -> nn.Module:
        return PropagationNet(replace(self.config.model, in_channels=self.data.in_channels,
                                      num_classes=self.num_classes))

    def state_dict_extra(self) -> dict[str, Any]:
        return {"windows": self.data.cache.windows,  # [{"name", "level", "width"}]
                "in_channels": self.data.in_channels, "num_classes": self.num_classes}

    def _clip_logits(self, model: nn.Module, batch: ClipBatch) -> torch.Tensor:
        return self.objective.logits(model(batch.images, self.objective.first_masks(batch),
                                           priors=self.objective.priors(batch)), batch)

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        batch = self.data.batch(step).to(self.device)
        logits = self._clip_logits(self.model, batch)
        targets = self.objective.targets(batch)
        ohem = sum(self.ohem(logits[:, t], targets[:, t], step=step)
                   for t in range(logits.shape[1]))
        lovasz = sum(self.lovasz(logits[:, t], targets[:, t]) for t in range(logits.shape[1]))
        loss = ohem + self.config.loss.lovasz_weight * lovasz
        return {"loss": loss, "loss_ohem": ohem, "loss_lovasz": lovasz,
                "ohem_ratio": self.ohem.ratio(step)}

    def validate(self, step: int) -> dict[str, float]:
        """``iou_mean``: see the module doc for what is averaged in each mode."""
        if not self.data.val_cases:
            return {}
        ious = []
        cfg = self.config.validation
        for index in range(cfg.batches):
            batch = self.data.val_batch(index, cfg.batch_size).to(self.device)
            pred = self._clip_logits(self.module, batch).argmax(2)
            targets = self.objective.targets(batch)
            for b, c in self.objective.scored(batch, pred, targets):
                p, g = pred[b] == c, targets[b] == c
                union = (p | g).sum().item()
                ious.append(1.0 if union == 0 else (p & g).sum().item() / union)
        return {"iou_mean": float(sum(ious) / len(ious)) if ious else 0.0}
