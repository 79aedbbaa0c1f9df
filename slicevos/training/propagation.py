"""Propagation-module training: STCN on 3-slice clips (per-object mode).

Each step draws a clip batch (frame 0's masks given, frames 1..T-1 predicted from memory) and
optimises bootstrapped cross entropy (OHEM: the hardest ``ratio(step)`` of pixels, decaying as
in STCN) + Lovasz-softmax on the aggregated (background + objects) logits of every predicted
frame. Padding object slots are masked out of the logits. Validation reports the mean
Jaccard (IoU) of the argmax over valid objects on fixed validation clips.

Joint (all-classes) mode training is not wired yet: it needs class masks per clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from slicevos.data.clips import ClipBatch, ClipData, ClipDataConfig
from slicevos.errors import InputError
from slicevos.losses import LovaszSoftmaxLoss, OhemCrossEntropy
from slicevos.models.propagation import PropagationModelConfig, PropagationNet
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


class PropagationTrainer(Trainer):
    kind = "propagation"

    def __init__(self, config: PropagationConfig, **kwargs: Any) -> None:
        if config.model.object_mode != "per_object":
            raise InputError(None, f"model.object_mode = {config.model.object_mode!r} cannot be "
                             "trained yet", "train with object_mode: per_object")
        super().__init__(config, **kwargs)
        self.data = ClipData(config.data, rank=self.dist.rank)
        loss = config.loss
        self.ohem = OhemCrossEntropy(loss.ohem_top_ratio, loss.ohem_warmup_start,
                                     loss.ohem_warmup_end)
        self.lovasz = LovaszSoftmaxLoss(classes="present")

    def build_model(self) -> nn.Module:
        return PropagationNet(replace(self.config.model, in_channels=self.data.in_channels))

    def state_dict_extra(self) -> dict[str, Any]:
        return {"windows": self.data.cache.windows,  # [{"name", "level", "width"}]
                "in_channels": self.data.in_channels}

    def _clip_logits(self, model: nn.Module, batch: ClipBatch) -> torch.Tensor:
        out = model(batch.images, batch.masks[:, 0])
        return mask_padding_slots(out.logits.float(), batch.valid)

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        batch = self.data.batch(step).to(self.device)
        logits = self._clip_logits(self.model, batch)
        targets = batch.targets()[:, 1:]
        ohem = sum(self.ohem(logits[:, t], targets[:, t], step=step)
                   for t in range(logits.shape[1]))
        lovasz = sum(self.lovasz(logits[:, t], targets[:, t]) for t in range(logits.shape[1]))
        loss = ohem + self.config.loss.lovasz_weight * lovasz
        return {"loss": loss, "loss_ohem": ohem, "loss_lovasz": lovasz,
                "ohem_ratio": self.ohem.ratio(step)}

    def validate(self, step: int) -> dict[str, float]:
        if not self.data.val_cases:
            return {}
        ious = []
        cfg = self.config.validation
        for index in range(cfg.batches):
            batch = self.data.val_batch(index, cfg.batch_size).to(self.device)
            pred = self._clip_logits(self.module, batch).argmax(2)
            targets = batch.targets()[:, 1:]
            for o in range(batch.valid.shape[1]):
                for b in torch.nonzero(batch.valid[:, o]).flatten().tolist():
                    p, g = pred[b] == o + 1, targets[b] == o + 1
                    union = (p | g).sum().item()
                    ious.append(1.0 if union == 0 else (p & g).sum().item() / union)
        return {"iou_mean": float(sum(ious) / len(ious)) if ious else 0.0}
