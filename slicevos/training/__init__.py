"""Training: the ``Trainer`` base (hooks + loop), checkpoints, logging, seeds and DDP."""

from slicevos.training.checkpoint import load_checkpoint, save_checkpoint
from slicevos.training.config import OptimConfig, TrainConfig
from slicevos.training.distributed import init_distributed, shutdown_distributed, unwrap
from slicevos.training.seeding import seed_everything
from slicevos.training.trainer import Trainer

__all__ = [
    "OptimConfig",
    "TrainConfig",
    "Trainer",
    "init_distributed",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "shutdown_distributed",
    "unwrap",
]
