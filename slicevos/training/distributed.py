"""Distributed data parallel through ``torchrun``; the same code runs as one plain process.

``torchrun --nproc_per_node=N tools/train_reference.py ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; ``init_distributed`` reads them (NCCL on CUDA, gloo on CPU). Under torchrun the
process group is joined even with one process (``--nproc_per_node=1`` runs the multi-GPU path:
DDP over NCCL); without torchrun the world has size 1 and no process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from slicevos.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    process_group: bool = False  # joined one (every torchrun launch, one process included)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """DDP, barriers and gathers are on: a world of several processes, or torchrun's."""
        return self.world_size > 1 or self.process_group


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError(None, "device 'cuda' requested but CUDA is not available",
                             "set train.device to 'cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group (if any) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    group = world_size > 1 or launched_by_torchrun()
    if group and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                    process_group=group)


def launched_by_torchrun() -> bool:
    """torchrun (``torch.distributed.run``) sets TORCHELASTIC_RUN_ID in every process it starts."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def shutdown_distributed() -> None:
    """Leave the process group (call once at the end of a torchrun script)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(module: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """DDP-wrap ``module`` in a distributed run (weights are broadcast from rank 0); else as is."""
    if not info.is_distributed:
        return module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def sync_batchnorm(module: nn.Module, info: DistInfo) -> nn.Module:
    """BatchNorm -> SyncBatchNorm in a distributed CUDA run (torch has no CPU version).

    Without it each rank normalises with its own batch statistics; DDP copies rank 0's running
    statistics to the other ranks at every forward, so checkpoints hold rank 0's.
    """
    if info.is_distributed and info.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP and/or ``torch.compile`` wrapper."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` without a process group)."""
    if not info.is_distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
