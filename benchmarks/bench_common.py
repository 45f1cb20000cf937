"""What the layer benchmarks share: a result row and its markdown table, the common
options (--device, --shapes, --clock, ...), timing medians and saved-tensor bytes."""

from __future__ import annotations

import argparse
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
    #: Median over rounds of each round's layer / plain time (``None``: not measured so).
    paired: float | None = None

    @property
    def ratio(self) -> float:
        return self.t_layer / self.t_plain


def markdown_table(
    rows: list[Row], device: str, rounds: str, layer_col: str = "layer ms",
    params_col: str = "params (layer / plain)",
) -> str:  # fmt: skip
    """The rows as a markdown table under a line naming ``device`` and ``rounds`` (e.g.
    "median of 5 interleaved rounds")."""
    paired = any(r.paired is not None for r in rows)
    extra = " paired ratio |" if paired else ""
    lines = [
        f"Device: {device}; torch {torch.__version__}; {rounds}.",
        "",
        f"| layer | input | precision | mode | plain ms | {layer_col} | ratio |{extra} "
        f"{params_col} |",
        "|---|---|---|---|---:|---:|---:|" + ("---:|" if paired else "") + "---:|",
    ]
    for r in rows:
        cell = "" if not paired else " - |" if r.paired is None else f" {r.paired:.2f} |"
        lines.append(
            f"| {r.layer} | {r.shape} | {r.precision} | {r.mode} | {r.t_plain * 1e3:.2f} | "
            f"{r.t_layer * 1e3:.2f} | {r.ratio:.2f} |{cell} {r.params} / {r.params_plain} |"
        )
    return "\n".join(lines) + "\n"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the layer-against-plain benchmarks: ``--device``, ``--batch``,
    ``--rounds``, ``--min-time``, ``--precisions``, ``--shapes``, ``--channels-last``,
    ``--markdown``, ``--threads``."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 8 on CPU")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timing block")
    parser.add_argument("--precisions", default="fp32,bf16-cl", help="comma list of fp32, bf16-cl")
    parser.add_argument("--shapes", default=None, help="comma list of C/HW, e.g. 64/56,512/7")
    parser.add_argument("--channels-last", action="store_true", help="channels_last for fp32 too")
    parser.add_argument("--markdown", default=None, help="write the table to this file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


#: ``--clock`` values and the timer each selects.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def add_clock_argument(parser: argparse.ArgumentParser) -> None:
    """``--clock wall|cpu`` (read it with ``CLOCKS[args.clock]``)."""
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (steadier on a shared machine "
        "with --threads 1; CPU only)",
    )


def parse_shapes(parser: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
    """``--shapes`` ``'C/HW,...'`` as ``[(C, HW), ...]``; a malformed list is a parser error."""
    try:
        shapes = [tuple(int(v) for v in s.split("/")) for s in text.split(",")]
        if any(len(s) != 2 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        parser.error(f"--shapes={text!r}; expected e.g. '64/56,128/28'")
    return shapes  # type: ignore[return-value]  # pairs, checked above


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
