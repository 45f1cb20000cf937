"""Starting and ending a spawned torch.distributed (gloo) test worker."""

from __future__ import annotations

import datetime
import os
import sys

import torch.distributed as dist


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
