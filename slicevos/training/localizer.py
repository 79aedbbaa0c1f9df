"""Abdomen-localizer training: a small classifier, one logit per slice, BCE with logits.

Each step draws a balanced batch of slices (``slicevos.data.localizer_data``) and optimises
``binary_cross_entropy_with_logits`` against the mask-derived labels (1 = the slice holds an
organ voxel). Validation scores every slice of the held-out volumes with the inference
``Localizer`` and reports:

- ``accuracy``: fraction of slices classified right (probability >= 0.5 vs the label);
- ``z_error``: per volume, the mean absolute error of the two ends of the predicted abdomen
  range (``predict_z_range`` without margin; no range predicted = the whole volume) against the
  labels' range, in slices, averaged over volumes; ``z_error_max``: the worst end over volumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slicevos.data.localizer_data import LocalizerBatch, LocalizerData, LocalizerDataConfig
from slicevos.inference.localizer import Localizer, predict_z_range
from slicevos.models.localizer import LocalizerModelConfig, LocalizerNet
from slicevos.training.config import TrainConfig
from slicevos.training.trainer import Trainer


@dataclass(frozen=True)
class LocalizerValidationConfig:
    """``smooth_slices``: the median filter of ``predict_z_range`` used for ``z_error``."""

    batch_size: int = 32
    max_cases: int | None = None
    smooth_slices: int = 5


@dataclass(frozen=True)
class LocalizerConfig:
    """The whole localizer experiment (``configs/localizer/*.yaml``); saved in checkpoints so a
    checkpoint alone rebuilds its network."""

    data: LocalizerDataConfig
    model: LocalizerModelConfig = field(default_factory=LocalizerModelConfig)
    validation: LocalizerValidationConfig = field(default_factory=LocalizerValidationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def range_ends(flags: np.ndarray) -> tuple[int, int]:
    """(first, last) abdomen slice of bool (D,) flags; the whole volume when there is none."""
    hits = np.flatnonzero(flags)
    return (int(hits[0]), int(hits[-1])) if hits.size else (0, len(flags) - 1)


class LocalizerTrainer(Trainer):
    kind = "localizer"

    def __init__(self, config: LocalizerConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.data = LocalizerData(config.data, config.model.input_size, rank=self.dist.rank)
        self._loader: Any = None

    def state_dict_extra(self) -> dict[str, Any]:
        """What inference needs beyond the config: the CT windows (cache records, in channel
        order) and the organ ids that defined "abdomen"."""
        return {"windows": self.data.windows, "in_channels": self.data.in_channels,
                "organ_ids": list(self.data.class_ids), "schema": self.data.cache.schema.name}

    def build_model(self) -> nn.Module:
        return LocalizerNet(self.config.model, in_channels=self.data.in_channels)

    def _batch(self, step: int) -> LocalizerBatch:
        if self.config.data.workers == 0:
            return self.data.batch(step).to(self.device)
        if self._loader is None:
            self._loader = iter(self.data.loader(step, pin_memory=self.device.type == "cuda"))
        return next(self._loader).to(self.device, non_blocking=True)

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        batch = self._batch(step)
        logits = self.model(batch.image).float()
        loss = F.binary_cross_entropy_with_logits(logits, batch.target)
        accuracy = ((logits > 0).float() == batch.target).float().mean()
        return {"loss": loss, "accuracy": accuracy}

    def validate(self, step: int) -> dict[str, float]:
        cfg = self.config.validation
        cases = self.data.val_cases[: cfg.max_cases]
        if not cases:
            return {}
        localizer = Localizer(self.module, self.data.windows, self.device, cfg.batch_size,
                              self.amp_dtype)
        correct = total = 0
        errors = []
        for case in cases:  # the memmap is read in batches; the localizer picks its channels
            scores = localizer.slice_scores(self.data.cache.image(case),
                                            windows=self.data.cache.windows)
            flags = self.data.flags[case]
            correct += int(((scores >= 0.5) == flags).sum())
            total += flags.size
            found = predict_z_range(scores, margin_slices=0, smooth_slices=cfg.smooth_slices)
            pred = (found[0], found[1] - 1) if found else (0, flags.size - 1)
            true = range_ends(flags)
            errors.append([abs(pred[0] - true[0]), abs(pred[1] - true[1])])
        errors = np.asarray(errors, dtype=np.float64)
        return {"accuracy": correct / total, "z_error": float(errors.mean()),
                "z_error_max": float(errors.max())}
