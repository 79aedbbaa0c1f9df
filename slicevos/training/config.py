"""Training settings shared by every trainer (frozen dataclasses loaded from YAML).

``OptimConfig`` holds what changes the optimisation; ``TrainConfig`` holds the run: where it
writes, how long it runs, how often it logs, validates and checkpoints. A trainer's own config
(model, data, losses) nests a ``TrainConfig`` under a field such as ``train``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from slicevos.errors import InputError

AMP_DTYPES = ("bfloat16", "float16")
BEST_MODES = ("max", "min")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a step schedule: the learning rate is multiplied by ``gamma`` at each milestone
    (iteration counts; the paper: 1e-4, x0.5 at 40k and 45k of 50k)."""

    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[int, ...] = (40_000, 45_000)
    gamma: float = 0.5
    grad_clip_norm: float | None = 1.0  # None: no clipping
    amp: bool = True  # mixed precision; used on CUDA only, ignored on CPU
    amp_dtype: str = "bfloat16"  # "bfloat16" or "float16" (float16 adds a GradScaler)

    def __post_init__(self) -> None:
        _check("optim.lr", self.lr > 0, self.lr, "a positive learning rate such as 1e-4")
        _check("optim.amp_dtype", self.amp_dtype in AMP_DTYPES, self.amp_dtype, f"one of {AMP_DTYPES}")
        _check("optim.milestones", list(self.milestones) == sorted(self.milestones),
               self.milestones, "increasing iteration counts")
        _check("optim.grad_clip_norm", self.grad_clip_norm is None or self.grad_clip_norm > 0,
               self.grad_clip_norm, "a positive norm, or null to turn clipping off")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Steps are iterations (one optimizer step each), counted from 0."""

    out_dir: str = "runs/train"
    seed: int = 0
    iterations: int = 50_000
    log_every: int = 50
    val_every: int = 1_000
    checkpoint_every: int = 1_000
    best_metric: str | None = None  # a key of validate()'s dict; None: no best.pt
    best_mode: str = "max"  # "max" or "min"
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    deterministic: bool = False  # torch.use_deterministic_algorithms
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient
    sync_batchnorm: bool = False  # DDP on CUDA: BatchNorm statistics over all ranks' batches
    progress: bool = True  # tqdm bar (rank 0 only)
    # a checkpoint of the same kind whose weights start a fresh run (fine-tuning: optimizer,
    # schedule and step start anew); not used when resuming (last.pt has the weights)
    init_weights: str | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        for name in ("iterations", "log_every", "val_every", "checkpoint_every"):
            value = getattr(self, name)
            _check(f"train.{name}", isinstance(value, int) and value > 0, value, "a positive integer")
        _check("train.best_mode", self.best_mode in BEST_MODES, self.best_mode, f"one of {BEST_MODES}")
        _check("train.device", self.device in DEVICES, self.device, f"one of {DEVICES}")


# Fields that control one invocation but not the trajectory of the weights; a resumed run may
# change them without tripping the config check.
RUN_CONTROL_FIELDS = frozenset(
    {"out_dir", "iterations", "log_every", "val_every", "checkpoint_every", "device", "progress"}
)


def find_train_config(config: Any, train: TrainConfig | None = None
                      ) -> tuple[TrainConfig, str | None]:
    """The TrainConfig of experiment dataclass ``config`` and its dotted field path.

    With ``train`` given: ``train`` and its path inside ``config`` (None when not nested there).
    Without: the first TrainConfig field found; ``LookupError`` when there is none.
    """
    for path, value in _walk(config):
        if (value is train) if train is not None else isinstance(value, TrainConfig):
            return value, path
    if train is None:
        raise LookupError(f"{type(config).__name__} has no TrainConfig field; pass train=")
    return train, None


def _walk(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        yield prefix + f.name, value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _walk(value, f"{prefix}{f.name}.")


def _check(key: str, ok: bool, value: object, expected: str) -> None:
    if not ok:
        raise InputError(None, f"{key} = {value!r} is invalid", f"set {key} to {expected}")
