"""The training loop every slicevos trainer shares; CPS and propagation trainers subclass it.

A subclass implements ``build_model`` and ``train_step`` (and usually ``validate``); the base
owns seeds, the device, DDP, the optimizer step (AMP, gradient clipping, schedule), logging,
checkpoints and exact resumption::

    class MyTrainer(Trainer):
        kind = "my_task"

        def build_model(self):
            return MyNet(self.config.model)

        def train_step(self, step):
            batch = self.data.batch(step).to(self.device)  # a pure function of (seed, rank, step)
            loss = self.loss(self.model(batch.image), batch.target)
            return {"loss": loss}  # "loss" is optimised; every value is logged as train/<key>

        def validate(self, step):
            return {"dice_mean": evaluate(self.module, ...)}  # logged as val/<key>

    MyTrainer(config, resume=args.resume).fit()  # config.train: a TrainConfig
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm import tqdm

from slicevos.config import config_to_dict, save_config
from slicevos.errors import InputError, warn_input
from slicevos.training.checkpoint import (
    check_resume_config,
    load_checkpoint,
    make_payload,
    save_checkpoint,
)
from slicevos.training.config import TrainConfig, find_train_config
from slicevos.training.distributed import (
    barrier,
    gather_objects,
    init_distributed,
    sync_batchnorm,
    wrap_model,
)
from slicevos.training.logging import MetricsLogger
from slicevos.training.seeding import (
    get_rng_state,
    preserve_rng,
    seed_everything,
    set_deterministic,
    set_rng_state,
)

LAST, BEST = "last.pt", "best.pt"
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")


class Trainer:
    """Base trainer. Attributes a subclass uses:

    ``config`` (its experiment dataclass), ``train_config``, ``device``, ``dist`` (rank, world
    size), ``model`` (DDP-wrapped in a distributed run: call it for the training forward, so
    gradients are synchronised), ``module`` (the plain network: use it in ``validate`` and for
    anything but the training forward), ``optimizer``, ``scheduler``, ``step``, ``out_dir``.

    Hooks: ``build_model`` (required), ``train_step`` (required), ``validate``,
    ``build_optimizer``, ``build_scheduler``, ``state_dict_extra``/``load_state_extra`` (values
    must be tensors/numbers/strings/containers), ``on_checkpoint``.
    """

    kind: ClassVar[str] = "generic"  # stored in checkpoints; resume checks it

    def __init__(self, config: Any, train: TrainConfig | None = None, *, resume: bool = False,
                 allow_config_change: bool = False) -> None:
        """``config``: the experiment dataclass (saved in checkpoints and as config.yaml);
        ``train``: its TrainConfig (default: the one found inside ``config``)."""
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")
        train, self._train_path = find_train_config(config, train)
        self.config = config
        self.train_config = train
        self.resume = resume
        self.allow_config_change = allow_config_change
        self.out_dir = Path(train.out_dir)
        self.dist = init_distributed(train.device)
        self.device = self.dist.device
        self.step = 0  # iterations completed == the next iteration to run
        self.best: dict[str, Any] = {"metric": train.best_metric, "value": None, "step": None}
        self.last_metrics: dict[str, float] = {}
        self._ready = False

    # ---- hooks --------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The network(s) to train, as one module (e.g. a CPS pair holding both nets)."""
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        """Run iteration ``step`` (0-based) under autocast; return ``{"loss": tensor, ...}``.

        The base backpropagates ``"loss"`` and steps the optimizer; every value is logged.
        """
        raise NotImplementedError

    def validate(self, step: int) -> dict[str, float]:
        """Metrics after ``step`` iterations (rank 0 only, eval mode, no grad, RNG untouched)."""
        return {}

    def build_optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        opt = self.train_config.optim
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Stepped once per iteration; default: x ``gamma`` at each milestone."""
        opt = self.train_config.optim
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(opt.milestones), opt.gamma)

    def state_dict_extra(self) -> dict[str, Any]:
        return {}

    def load_state_extra(self, state: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, path: Path) -> None:
        """Called on rank 0 after ``path`` (last.pt or best.pt) was written."""

    # ---- helpers for subclasses ---------------------------------------------------------
    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None when AMP is off (always off on CPU)."""
        opt = self.train_config.optim
        return getattr(torch, opt.amp_dtype) if opt.amp and self.device.type == "cuda" else None

    def autocast(self) -> AbstractContextManager:
        dtype = self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    # ---- setup and loop -----------------------------------------------------------------
    def setup(self) -> None:
        """Build model, optimizer, schedule; restore ``last.pt`` when resuming. Idempotent."""
        if self._ready:
            return
        cfg = self.train_config
        set_deterministic(cfg.deterministic)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        seed_everything(cfg.seed, rank=0)  # the same initial weights on every rank
        self.module = self.build_model().to(self.device)
        if cfg.sync_batchnorm:
            self.module = sync_batchnorm(self.module, self.dist)
        self.optimizer = self.build_optimizer(self.module)
        self.scheduler = self.build_scheduler(self.optimizer)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.model = wrap_model(self.module, self.dist, cfg.find_unused_parameters)
        seed_everything(cfg.seed, rank=self.dist.rank)
        last = self.out_dir / LAST
        rng_state = None
        if self.resume:
            rng_state = self._restore(last)
        elif last.exists():
            raise InputError(last, "the output folder already holds a training run",
                             "pass --resume to continue it, or choose another out_dir")
        elif cfg.init_weights is not None:
            self._init_weights(Path(cfg.init_weights))
        if self.dist.is_main:
            save_config(self.config, self.out_dir / "config.yaml")
        self.logger = MetricsLogger(self.out_dir, enabled=self.dist.is_main, start_step=self.step)
        if rng_state is not None:  # last, so nothing above can shift the restored streams
            set_rng_state(rng_state)
        self._ready = True

    def fit(self) -> dict[str, float]:
        """Train from ``self.step`` to ``iterations``; returns the last validation metrics."""
        self.setup()
        cfg = self.train_config
        sums: dict[str, Any] = {}
        count = 0
        bar = tqdm(range(self.step, cfg.iterations), initial=self.step, total=cfg.iterations,
                   desc=self.kind, unit="it", dynamic_ncols=True,
                   disable=not (cfg.progress and self.dist.is_main))
        try:
            self.module.train()
            for step in bar:
                with self.autocast():
                    out = self.train_step(step)
                if "loss" not in out:
                    raise KeyError(f"{type(self).__name__}.train_step must return a 'loss' entry")
                out = {**out, "grad_norm": self._optimize(out["loss"])}
                self.step = done = step + 1
                for key, value in out.items():
                    if value is not None:
                        value = value.detach().float() if torch.is_tensor(value) else float(value)
                        sums[key] = sums.get(key, 0.0) + value
                count += 1
                if _due(done, cfg.log_every, cfg.iterations):
                    loss = self._log_train(done, sums, count)
                    sums, count = {}, 0
                    bar.set_postfix(loss=f"{loss:.4f}")
                if _due(done, cfg.val_every, cfg.iterations):
                    self._validate(done)
                if _due(done, cfg.checkpoint_every, cfg.iterations):
                    self.save_last()
        finally:
            bar.close()
            self.logger.close()
        return self.last_metrics

    def _optimize(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Backward (scaled for float16 AMP), clip, optimizer and schedule step; the grad norm."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if self.train_config.optim.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self._params, self.train_config.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._lr_used = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return grad_norm

    def _log_train(self, done: int, sums: dict[str, Any], count: int) -> float:
        """Log means over the interval (this rank's values); stop on a non-finite loss."""
        means = {f"train/{k}": float(v) / count for k, v in sums.items()}
        loss = means["train/loss"]
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} in the {count} iterations before step {done}. "
                "Fix: lower optim.lr, set optim.grad_clip_norm, or set optim.amp to false")
        means["train/lr"] = self._lr_used  # of the interval's last iteration
        self.logger.log(done, means)
        return loss

    def _validate(self, done: int) -> None:
        if self.dist.is_main:
            self.module.eval()
            with preserve_rng(), torch.no_grad():
                metrics = {k: float(v) for k, v in self.validate(done).items()}
            self.module.train()
            if metrics:
                self.last_metrics = metrics
                self.logger.log(done, {f"val/{k}": v for k, v in metrics.items()})
                if self._is_improvement(metrics):
                    name = self.train_config.best_metric
                    self.best = {"metric": name, "value": metrics[name], "step": done}
                    self._write(BEST, full_state=None)
        barrier(self.dist)

    def _is_improvement(self, metrics: dict[str, float]) -> bool:
        name = self.train_config.best_metric
        if name is None:
            return False
        if name not in metrics:
            raise InputError(None, f"train.best_metric {name!r} is not among the validation "
                             f"metrics {sorted(metrics)}", "set train.best_metric to one of them")
        value, best = metrics[name], self.best["value"]
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value > best if self.train_config.best_mode == "max" else value < best

    # ---- checkpoints --------------------------------------------------------------------
    def save_last(self) -> None:
        """Write ``last.pt`` with the full training state (all ranks call this)."""
        rngs = gather_objects(get_rng_state(), self.dist)
        if self.dist.is_main:
            state = {"optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rngs[0]}
            if self.dist.is_distributed:
                state["rng_by_rank"] = rngs
            self._write(LAST, full_state=state)
        barrier(self.dist)

    def _write(self, name: str, full_state: dict[str, Any] | None) -> None:
        """best.pt holds weights only (for inference); last.pt adds ``full_state``."""
        payload = make_payload(
            self.kind, config_to_dict(self.config), self.module.state_dict(), self.step,
            train=config_to_dict(self.train_config), metrics=self.last_metrics, best=self.best,
            extra=self.state_dict_extra(), **(full_state or {}))
        path = save_checkpoint(self.out_dir / name, payload)
        self.on_checkpoint(path)

    def _init_weights(self, path: Path) -> None:
        """Start from the weights of checkpoint ``path`` (``train.init_weights``)."""
        payload = load_checkpoint(path, map_location=self.device, kind=self.kind)
        try:
            self.module.load_state_dict(payload["model"])
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise InputError(path, f"its weights do not fit this model ({first})",
                             "give train.init_weights a checkpoint of the same model config") from None

    def _restore(self, path: Path) -> dict[str, Any] | None:
        """Load ``last.pt`` into model, optimizer, schedule, scaler, step and best; return this
        rank's RNG state to apply (None when the world size changed: streams are reseeded)."""
        payload = load_checkpoint(path, map_location=self.device, kind=self.kind)
        missing = [k for k in TRAINING_STATE if k not in payload]
        if missing:
            raise InputError(path, f"checkpoint has no training state ({missing} missing)",
                             "resume from a last.pt written by training")
        check_resume_config(path, payload, self.config, self.train_config, self._train_path,
                            self.allow_config_change)
        self.module.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if payload["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        self.step = int(payload["step"])
        if payload["best"].get("metric") == self.train_config.best_metric:
            self.best = payload["best"]
        self.last_metrics = payload["metrics"]
        self.load_state_extra(payload.get("extra", {}))
        rngs = payload.get("rng_by_rank") or [payload["rng"]]
        if len(rngs) == self.dist.world_size:
            return rngs[self.dist.rank]
        seed_everything(self.train_config.seed + self.step, rank=self.dist.rank)
        warn_input(path, f"checkpoint was written by {len(rngs)} process(es), this run has "
                   f"{self.dist.world_size}; random streams are reseeded, so the run will not "
                   "match an uninterrupted one exactly", "resume with the same number of "
                   "processes for an exact match")
        return None


def _due(done: int, every: int, total: int) -> bool:
    return done % every == 0 or done == total
