"""Where a ``symconv compare`` process runs: its device, and its place among ``torchrun``'s.

Under ``torchrun`` (``WORLD_SIZE > 1``) every process joins one process group (NCCL on
GPU, gloo on CPU); only rank 0 writes files or prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from symconv.checkpoint import rng_state
from symconv.compare.config import DEVICES

__all__ = ["DistContext", "gather_rng", "setup_distributed", "sync_buffers"]


@dataclass
class DistContext:
    """Where this process runs: its device and its place among the processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str = "auto") -> DistContext:
    """Pick the device and, under ``torchrun`` (``WORLD_SIZE > 1``), join the process group."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not allowed; use 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch sees no CUDA device")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
        # Fixed input shapes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    else:
        dev = torch.device("cpu")
    here = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            **({"device_id": dev} if use_cuda else {}),
        )
        here = True
    return DistContext(dev, rank, world_size, local_rank, here)


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's batch-norm statistics everywhere, so every rank evaluates the same model."""
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def gather_rng(ctx: DistContext) -> list[dict[str, Any]]:
    """Every rank's :func:`~symconv.checkpoint.rng_state`, by rank (a collective)."""
    state = rng_state()
    if not ctx.distributed:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states
