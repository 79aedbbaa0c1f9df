"""Reference-module training: TransUNet + DeepLabV3+ with Cross Pseudo Supervision.

Each step draws a labeled batch (and in CPS mode an unlabeled one), runs both networks on the
concatenation, and optimises::

    loss = sup(a, y) + sup(b, y) + w(step) * [cps(a <- argmax b) + cps(b <- argmax a)]

``sup`` is Dice + CE with label smoothing under the partial-label (marginal) rule; ``cps`` is
the configured pseudo-label loss (paper: Dice) over the labeled and unlabeled predictions; the
weight ramps up as ``w * exp(-5 (1 - t)^2)`` over ``rampup_iterations`` (t = step / rampup).
Validation segments whole held-out volumes with the pair (mean of the two softmaxes) and
reports 3D DSC per organ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slicevos.data.slices import SliceBatch, SliceData, SliceDataConfig
from slicevos.errors import InputError
from slicevos.inference.reference.segmenter import ReferenceSegmenter
from slicevos.inference.validation import volume_dice
from slicevos.io.labels import get_schema
from slicevos.losses import CPS_KINDS, CPSLoss, DiceCELoss
from slicevos.models.config import ModelConfig
from slicevos.models.reference.cps import CPSConfig, build_cps_pair
from slicevos.training.config import TrainConfig
from slicevos.training.trainer import Trainer

MODES = ("supervised", "cps")


@dataclass(frozen=True)
class SupervisedLossConfig:
    smoothing: float = 0.1
    dice_weight: float = 1.0
    ce_weight: float = 1.0


@dataclass(frozen=True)
class CPSTrainingConfig:
    """``mode``: "cps" (labeled + unlabeled) or "supervised" (labeled only, same schedule).
    ``confidence``: the CPS targets keep only the pixels where the teacher network's softmax
    peak reaches it (0: every pixel, the paper's CPS; see ``slicevos.losses.cps``)."""

    mode: str = "cps"
    loss: str = "dice"
    weight: float = 1.0
    rampup_iterations: int = 0
    confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(None, f"cps.mode = {self.mode!r} is invalid", f"use one of {MODES}")
        if self.loss not in CPS_KINDS:
            raise InputError(None, f"cps.loss = {self.loss!r} is invalid",
                             f"use one of {sorted(CPS_KINDS)}")
        if not 0 <= self.confidence < 1:
            raise InputError(None, f"cps.confidence = {self.confidence} is out of range",
                             "use a softmax probability in [0, 1), e.g. 0.9 (0 = every pixel)")

    def weight_at(self, step: int) -> float:
        if self.rampup_iterations <= 0 or step >= self.rampup_iterations:
            return self.weight
        return self.weight * math.exp(-5.0 * (1.0 - step / self.rampup_iterations) ** 2)


@dataclass(frozen=True)
class ValidationConfig:
    batch_size: int = 8
    max_cases: int | None = None


def _default_models() -> CPSConfig:
    return CPSConfig(ModelConfig("transunet"), ModelConfig("deeplabv3plus"))


@dataclass(frozen=True)
class ReferenceConfig:
    """The whole reference experiment (``configs/reference/*.yaml``); saved in checkpoints so a
    checkpoint alone rebuilds its model."""

    data: SliceDataConfig
    schema: str = "flare22"
    model: CPSConfig = field(default_factory=_default_models)
    loss: SupervisedLossConfig = field(default_factory=SupervisedLossConfig)
    cps: CPSTrainingConfig = field(default_factory=CPSTrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ReferenceTrainer(Trainer):
    kind = "reference_cps"

    def __init__(self, config: ReferenceConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.schema = get_schema(config.schema)
        self.data = SliceData(config.data, self.schema, rank=self.dist.rank)
        self.sup_loss = DiceCELoss(config.loss.smoothing, config.loss.dice_weight,
                                   config.loss.ce_weight)
        self.cps_loss = CPSLoss(config.cps.loss, confidence=config.cps.confidence)
        self._loaders: dict[str, Any] = {}

    def state_dict_extra(self) -> dict[str, Any]:
        """What inference needs beyond the config: the CT windows the networks were trained on
        (in channel order) and the class count."""
        return {"windows": self.data.cache.windows,  # [{"name", "level", "width"}]
                "in_channels": self.data.in_channels, "num_classes": self.schema.num_classes}

    def build_model(self) -> nn.Module:
        return build_cps_pair(self.config.model, self.schema.num_classes, self.data.in_channels)

    def _batch(self, kind: str, step: int) -> SliceBatch:
        """Batch ``step``: built here, or by DataLoader workers (same content) if configured."""
        if self.config.data.workers == 0:
            return self.data.batch(kind, step).to(self.device)
        if kind not in self._loaders:
            self._loaders[kind] = iter(self.data.loader(
                kind, start_step=step, pin_memory=self.device.type == "cuda"))
        return next(self._loaders[kind]).to(self.device, non_blocking=True)

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        cps_on = self.config.cps.mode == "cps"
        labeled = self._batch("labeled", step)
        images, positions = labeled.image, labeled.position
        if cps_on:
            unlabeled = self._batch("unlabeled", step)
            images = torch.cat([images, unlabeled.image])
            positions = torch.cat([positions, unlabeled.position])
        logits_a, logits_b = self.model(images, positions)
        n = len(labeled)
        sup = (self.sup_loss(logits_a[:n].float(), labeled.target, labeled.annotated)
               + self.sup_loss(logits_b[:n].float(), labeled.target, labeled.annotated))
        out: dict[str, torch.Tensor | float] = {"loss_sup": sup}
        loss = sup
        if cps_on:
            cps = (self.cps_loss(logits_a.float(), logits_b.float())
                   + self.cps_loss(logits_b.float(), logits_a.float()))
            weight = self.config.cps.weight_at(step)
            loss = loss + weight * cps
            out.update(loss_cps=cps, cps_weight=weight)
        out["loss"] = loss
        return out

    def validate(self, step: int) -> dict[str, float]:
        cases = self.data.val_cases[: self.config.validation.max_cases]
        if not cases:
            return {}
        segmenter = ReferenceSegmenter(self.module, self.device, self.config.validation.batch_size,
                                       self.amp_dtype)
        segmenter.model_spacing_mm = self.config.data.spacing_mm
        return volume_dice(segmenter, self.data.cache, cases, self.schema)
