"""Spawned torch.distributed (gloo) test workers, and the DDP-versus-one-process harness."""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def start_gloo_worker(rank: int, world: int, init_file: str) -> None:
    """Join the gloo group of ``world`` workers that rendezvous through ``init_file``, on the
    loopback interface (no hostname lookups), giving up after two minutes."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )


def finish_gloo_worker() -> None:
    """Wait for every rank, then end this process without tearing gloo down.

    gloo's teardown is not ordered between ranks: a rank whose peer closed its connections
    first aborted now and then ("terminate called without an active exception", about one
    run in 20 of the DDP tests, with or without a barrier before destroy_process_group).
    The exit code stays 0; results must be written before this is called.
    """
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train(model: nn.Module, inputs: tuple[Tensor, ...], target: Tensor, lr: float, steps: int):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(*inputs), target).backward()
        opt.step()


def _ddp_worker(rank: int, world: int, tmp: str, make_model: Callable[[], nn.Module], lr, steps):
    torch.set_num_threads(1)
    start_gloo_worker(rank, world, str(Path(tmp) / "init"))
    inputs, target = torch.load(Path(tmp) / "data.pt", weights_only=True)
    part = slice(rank * len(target) // world, (rank + 1) * len(target) // world)
    model = nn.parallel.DistributedDataParallel(make_model())
    _train(model, tuple(t[part] for t in inputs), target[part], lr, steps)
    if rank == 0:
        torch.save(model.module.state_dict(), Path(tmp) / "result.pt")
    finish_gloo_worker()


def ddp_and_single_process_states(
    make_model: Callable[[], nn.Module],
    inputs: tuple[Tensor, ...],
    target: Tensor,
    tmp_path: Path,
    *,
    lr: float = 0.5,
    steps: int = 2,
    world: int = 2,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """``(start, ddp, single)`` state dicts of ``make_model()``: before training, after
    ``steps`` SGD steps of DistributedDataParallel over ``world`` gloo workers (each given
    an equal batch slice of ``inputs`` and ``target``), and after the same steps in this
    process on the whole batch. With the MSE loss (a mean) and equal slices, the averaged
    gradients equal the whole batch's, so ``ddp`` must equal ``single`` up to rounding.

    ``make_model`` must be a module-level function (the workers are spawned) that returns
    the same initial model on every call (seed inside it). Mark the test
    ``requires_gloo``.
    """
    import torch.multiprocessing as mp

    if len(target) % world:
        raise ValueError(f"a batch of {len(target)} does not split into {world} equal slices")
    torch.save((tuple(inputs), target), tmp_path / "data.pt")
    mp.spawn(_ddp_worker, args=(world, str(tmp_path), make_model, lr, steps), nprocs=world)
    model = make_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, tuple(inputs), target, lr, steps)
    ddp = torch.load(tmp_path / "result.pt", weights_only=True)
    return start, ddp, model.state_dict()
