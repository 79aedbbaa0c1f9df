"""A tiny real task for trainer tests: a 2-layer conv net learns to segment a bright disk.

Batches are a pure function of (seed, rank, step), as in slicevos' data pipeline. Run as a
script (``torchrun --nproc_per_node=2 toy_task.py OUT_DIR``) it trains with DDP and saves each
rank's final weights as ``OUT_DIR/rank<r>_weights.pt``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from slicevos.training import OptimConfig, TrainConfig, Trainer, shutdown_distributed

SIZE = 32


def disk_batch(seed: int, rank: int, step: int, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 1, 32, 32) float32: a disk at 0.8 on noise; target (B, 32, 32) int64."""
    rng = np.random.default_rng([seed, rank, step])
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centers = rng.uniform(8, SIZE - 8, size=(batch, 2))
    radii = rng.uniform(3, 7, size=batch)
    masks = (yy - centers[:, :1, None]) ** 2 + (xx - centers[:, 1:, None]) ** 2 <= radii[:, None, None] ** 2
    images = 0.2 + 0.6 * masks + rng.normal(0, 0.1, size=masks.shape)
    return torch.from_numpy(images[:, None].astype(np.float32)), torch.from_numpy(masks.astype(np.int64))


@dataclass(frozen=True)
class ToyConfig:
    width: int = 8
    train: TrainConfig = field(default_factory=TrainConfig)


def toy_config(out_dir, iterations: int, **train_fields) -> ToyConfig:
    """A fast default run in ``out_dir``; ``train_fields`` override TrainConfig fields."""
    optim = train_fields.pop("optim", OptimConfig(lr=1e-2, milestones=(6, 9)))
    train = TrainConfig(out_dir=str(out_dir), iterations=iterations, log_every=4, val_every=4,
                        checkpoint_every=100, best_metric="dice", progress=False, device="cpu",
                        optim=optim)
    return ToyConfig(train=replace(train, **train_fields))


class ToyTrainer(Trainer):
    kind = "toy_disk"

    def __init__(self, config: ToyConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.loss_fn = nn.CrossEntropyLoss()

    def build_model(self) -> nn.Module:
        w = self.config.width
        return nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                             nn.Dropout2d(0.2), nn.Conv2d(w, 2, 3, padding=1))

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        images, target = disk_batch(self.train_config.seed, self.dist.rank, step)
        logits = self.model(images.to(self.device))
        loss = self.loss_fn(logits, target.to(self.device))
        return {"loss": loss, "fg_fraction": target.float().mean().item()}

    def validate(self, step: int) -> dict[str, float]:
        images, target = disk_batch(seed=12345, rank=0, step=0, batch=16)
        pred = self.module(images.to(self.device)).argmax(1).cpu()
        inter = ((pred == 1) & (target == 1)).sum().item()
        return {"dice": 2 * inter / ((pred == 1).sum().item() + (target == 1).sum().item())}


def main(out_dir: str) -> None:
    trainer = ToyTrainer(toy_config(out_dir, iterations=6, checkpoint_every=6))
    trainer.fit()
    torch.save(trainer.module.state_dict(), f"{out_dir}/rank{trainer.dist.rank}_weights.pt")
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
