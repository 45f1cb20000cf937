"""What the layer benchmarks share: a result row, timing medians and saved-tensor bytes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Row:
    """One layer against the plain layer of the same shape, timed in the same run."""

    layer: str
    shape: str
    precision: str
    mode: str
    params: int
    params_plain: int
    t_plain: float
    t_layer: float

    @property
    def ratio(self) -> float:
        return self.t_layer / self.t_plain


def sync(device: str) -> None:
    """Wait for the device, so a timer sees the work (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(
    fn: Callable[[], object],
    device: str,
    min_time: float,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds per call over a block of calls lasting about ``min_time`` (at least
    three), after one warm-up call; ``clock`` measures each call."""
    fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 3:
        t0 = clock()
        fn()
        sync(device)
        times.append(clock() - t0)
    return statistics.median(times)


def saved_bytes(step: Callable[[], Tensor], owned: frozenset[int] | set[int] = frozenset()) -> int:
    """Bytes of the unique storages autograd saves for backward during ``step``'s forward,
    not counting storages whose ``data_ptr`` is in ``owned``."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            s = t.untyped_storage()
            if s.data_ptr() not in owned:
                seen[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(seen.values())
