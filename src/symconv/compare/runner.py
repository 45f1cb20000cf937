"""``run_compare``: load the data, train every (variant, run), write and print the results.

The output folder holds::

    config.json            the configuration (checked on --resume)
    results.json           every number, the configuration, versions, seeds
    results.csv            one row per variant: mean and std of every metric
    table.md               the terminal table in Markdown
    learning_curves.png    training loss and clean test accuracy per epoch
    robustness.png         accuracy per transformation and variant
    checkpoints/<variant>-run<k>.pt
    .lock                  held (flock) by the run writing the folder
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from symconv.compare.checkpoints import CheckpointStore, scan_checkpoints
from symconv.compare.config import VARIANTS, CompareConfig, fingerprint
from symconv.compare.console import console
from symconv.compare.data import ImageData, load_data
from symconv.compare.distributed import DistContext, setup_distributed
from symconv.compare.errors import CompareError
from symconv.compare.memory import malloc_tuned
from symconv.compare.outdir import DEFAULT_ROOT, FolderLock, open_out
from symconv.compare.progress import JobProgress
from symconv.compare.report import (
    csv_rows,
    format_markdown,
    format_table,
    plot_learning_curves,
    plot_robustness,
    summarize,
    write_csv,
    write_json,
    write_text,
)
from symconv.compare.train import RunInterrupted, train_run
from symconv.compare.transforms import TRANSFORMS
from symconv.compare.variants import build_variant

__all__ = ["DEFAULT_ROOT", "CompareConfig", "auto_threads", "run_compare"]

RESULTS_FORMAT = "symconv-compare/1"
PLOTS = ("learning_curves.png", "robustness.png")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _environment(ctx: DistContext) -> dict[str, Any]:
    import symconv

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "symconv": symconv.__version__,
        "platform": platform.platform(),
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "torch_threads": torch.get_num_threads(),
        "malloc_keeps_freed_memory": malloc_tuned(),
    }
    if ctx.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(ctx.device)
        env["cuda"] = torch.version.cuda
        env["precision"] = "bfloat16 autocast, channels_last"
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["precision"] = "float32"
    if ctx.distributed:
        env["backend"] = torch.distributed.get_backend()
    return env


def auto_threads(processes: int = 1) -> int:
    """CPU threads per process: its share of the cores, minus the cores others keep busy.

    An intra-op thread pool larger than the idle cores is much slower than a smaller one
    (every parallel region waits for its descheduled threads), so the 1-minute load
    average, taken before training starts, caps the count.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cores or 1) // max(1, processes))
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return share
    return max(1, min(share, math.floor((cores or 1) - busy + 0.5)))


def run_compare(
    config: CompareConfig,
    *,
    log: Callable[[str], None] | None = None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Run the comparison ``config`` describes and return the ``results.json`` content.

    Everything the user gave (data, variants, the output folder, its checkpoints on
    ``--resume``) is checked before anything trains: :class:`CompareError` (a
    ``ValueError``) says what is wrong, ``OSError`` what cannot be read or written. The
    output folder is locked for the whole run; a second run into it is refused. On
    ``KeyboardInterrupt`` (Ctrl-C; the command turns SIGTERM into one too)
    ``results.json`` is left with ``"status": "interrupted"`` and the exception goes on,
    with the folder in its ``out`` attribute.
    """
    try:
        ctx = setup_distributed(config.device)
    except ValueError as err:  # --device cuda without CUDA
        raise CompareError(str(err)) from err
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    elif ctx.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(auto_threads(local))
    say = console(log) if ctx.is_main else (lambda _msg: None)
    try:
        results = _run(config, ctx, say, command)
        # No rank tears the process group down while a peer may still use it: gloo can
        # abort a process whose peer vanished mid-conversation.
        ctx.barrier()
        return results
    finally:
        torch.set_num_threads(threads)
        ctx.close()


def _on_main(ctx: DistContext, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0, its value (or its CompareError / OSError) on every rank."""
    outcome: tuple[str, Any] = ("ok", None)
    if ctx.is_main:
        try:
            outcome = ("ok", work())
        except CompareError as err:
            if not ctx.distributed:
                raise
            outcome = ("input", str(err))
        except OSError as err:
            if not ctx.distributed:
                raise
            outcome = ("os", (err.errno, err.strerror, err.filename))
    kind, value = ctx.broadcast_object(outcome)
    if kind == "input":
        raise CompareError(value)
    if kind == "os":
        raise OSError(*value)
    return value


def _load_checked_data(config: CompareConfig) -> ImageData:
    """The data, and every variant built once on it, so that a spec that converts nothing
    fails before training; :class:`CompareError` says what is wrong."""
    try:
        data = load_data(
            config.data,
            size=config.size,
            color=config.color,
            limit=config.limit,
            workers=config.workers,
        )
    except (ValueError, FileNotFoundError) as err:
        # load_data checks everything about --data and says what is wrong with it.
        raise CompareError(str(err)) from err
    s = config.settings
    for variant in config.variants:
        try:
            build_variant(
                variant,
                s.model,
                data.channels,
                data.num_classes,
                size=min(data.size),
                width=s.width,
                symmetry=s.symmetry,
                invariant_key=s.invariant_key,
                group_width=s.group_width,
            )
        except ValueError as err:
            raise CompareError(str(err)) from err
        except (MemoryError, RuntimeError) as err:
            if not _out_of_memory(err):
                raise
            raise CompareError(
                f"the {variant} network at --width {s.width or 'default'} does not fit in "
                f"memory ({_allocation(err)}); choose a smaller --width"
            ) from err
    return data


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (Python's, or torch's CPU or CUDA one)."""
    text = str(err)
    return isinstance(err, MemoryError | torch.OutOfMemoryError) or (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def _allocation(err: BaseException) -> str:
    """The allocator's words for a failed allocation, without torch's source location."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split("DefaultCPUAllocator: ")[-1]


def _run(
    config: CompareConfig, ctx: DistContext, say: Callable[[str], None], command: list[str] | None
) -> dict[str, Any]:
    started = time.time()
    data = _load_checked_data(config)
    identity = fingerprint(config.to_dict(), ctx.world_size)
    lock: FolderLock | None = None

    def open_folder() -> Path:
        nonlocal lock
        out, lock = open_out(config, identity)
        return out

    try:
        out = _on_main(ctx, open_folder)
        store = CheckpointStore(out / "checkpoints")
        found, notes = _on_main(ctx, lambda: scan_checkpoints(store, config.seed, identity))
        results = _Results(config, ctx, data, out, command, started)
        if ctx.is_main and not config.resume:
            write_json(
                out / "config.json", {"config": results.config_dict, "world_size": ctx.world_size}
            )
        ctx.barrier()
        _announce(config, ctx, data, out, say)
        for note in notes:
            say(note)
        results.keep_finished(found, say)
        return _train_all(results, store, found, say, identity)
    finally:
        if lock is not None:
            lock.release()


def _announce(
    config: CompareConfig, ctx: DistContext, data: ImageData, out: Path, say: Callable[[str], None]
) -> None:
    s = config.settings
    h, w = data.size
    say(
        f"symconv compare: {data.name} ({len(data.train_labels)} train / "
        f"{len(data.test_labels)} test, {data.channels}x{h}x{w}, {data.num_classes} classes), "
        f"model {s.model}, variants {', '.join(config.variants)}, {config.runs} run(s) x "
        f"{s.epochs} epochs on {ctx.device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else "")
        + (f" ({_plural(torch.get_num_threads(), 'thread')})" if ctx.device.type == "cpu" else "")
        + f"; output in {out}"
    )


class _Results:
    """``results.json`` of a run as it goes, and the tables written beside it."""

    def __init__(
        self,
        config: CompareConfig,
        ctx: DistContext,
        data: ImageData,
        out: Path,
        command: list[str] | None,
        started: float,
    ) -> None:
        self.config, self.ctx, self.data, self.out = config, ctx, data, out
        self.started = started
        self.config_dict = config.to_dict()
        self.config_dict["out"] = str(out)
        self.seeds = [config.seed + r for r in range(config.runs)]
        #: ``{variant: {run: result}}`` of every finished run, including those of variants
        #: and runs this invocation does not ask for (a --resume with fewer --variants or
        #: --runs keeps them in every table and plot).
        self.finished: dict[str, dict[int, dict[str, Any]]] = {}
        s = config.settings
        self.doc: dict[str, Any] = {
            "format": RESULTS_FORMAT,
            "status": "running",
            "command": command,
            "config": self.config_dict,
            "data": data.describe(),
            "environment": _environment(ctx),
            "seeds": self.seeds,
            "transforms": {t: TRANSFORMS[t].description for t in s.transforms},
            "variants": {},
            "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
            "plots": [],
        }

    def keep_finished(
        self, found: dict[tuple[str, int], dict[str, Any]], say: Callable[[str], None]
    ) -> None:
        """Take the finished runs among the checkpoints ``found``; say which of them this
        invocation does not ask for."""
        config = self.config
        for (variant, run), state in found.items():
            if state.get("finished"):
                self.finished.setdefault(variant, {})[run] = state["result"]
        kept = sorted(
            (v, r)
            for v, runs in self.finished.items()
            for r in runs
            if v not in config.variants or r >= config.runs
        )
        if kept:
            say(
                f"keeping {_plural(len(kept), 'finished run')} this invocation does not ask for: "
                + ", ".join(f"{v} run {r + 1}" for v, r in kept)
            )

    def collect(self) -> dict[str, Any]:
        """Summarize the finished runs into ``variants`` (asked-for variants first)."""
        config, finished = self.config, self.finished
        order = [*config.variants, *(v for v in VARIANTS if v not in config.variants)]
        variants: dict[str, Any] = {}
        for variant in order:
            runs = [finished[variant][r] for r in sorted(finished.get(variant, {}))]
            if runs:
                variants[variant] = {
                    "params": runs[0]["params"],
                    "description": runs[0]["description"],
                    "converted": runs[0]["converted"],
                    "skipped": runs[0]["skipped"],
                    "runs": runs,
                    **summarize(runs),
                }
        self.doc["variants"] = variants
        self.doc["seeds"] = sorted(
            set(self.seeds) | {r["seed"] for v in variants.values() for r in v["runs"]}
        )
        return variants

    def write(self) -> None:
        """``results.json``, and ``results.csv`` and ``table.md`` once a run is finished."""
        if not self.ctx.is_main:
            return
        self.collect()
        self.doc["elapsed_s"] = time.time() - self.started
        write_json(self.out / "results.json", self.doc)
        done, transforms = self.doc["variants"], self.config.settings.transforms
        if done:
            write_csv(self.out / "results.csv", csv_rows(done, transforms))
            write_text(self.out / "table.md", format_markdown(done, transforms) + "\n")


def _train_all(
    results: _Results,
    store: CheckpointStore,
    found: dict[tuple[str, int], dict[str, Any]],
    say: Callable[[str], None],
    identity: dict[str, Any],
) -> dict[str, Any]:
    config, ctx, out, s = results.config, results.ctx, results.out, results.config.settings
    progress = config.progress
    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("CI")
    budget = [config.max_epochs_this_run] if config.max_epochs_this_run else None
    if ctx.is_main:
        # Plots are drawn when the job completes; until then older ones would disagree
        # with the tables.
        for name in PLOTS:
            (out / name).unlink(missing_ok=True)
    results.write()

    remaining = sum(
        0
        if found.get((v, r), {}).get("finished")
        else s.epochs - found.get((v, r), {}).get("epoch", 0)
        for v in config.variants
        for r in range(config.runs)
    )
    job = JobProgress(remaining, len(config.variants), config.runs, bar=progress and ctx.is_main)
    try:
        for i, variant in enumerate(config.variants):
            for r, seed in enumerate(results.seeds):
                job.start(variant, i, r)
                res = train_run(
                    variant,
                    r,
                    seed,
                    results.data,
                    s,
                    ctx,
                    store,
                    log=say,
                    progress=progress,
                    label=f"{variant} run {r + 1}/{config.runs}",
                    budget=budget,
                    identity=identity,
                    job=job,
                )
                results.finished.setdefault(variant, {})[r] = res
                results.write()
    except RunInterrupted as stop:
        job.close()
        results.doc["status"] = "interrupted"
        results.write()
        say(f"{stop}; continue with --resume --out {out}")
        return results.doc
    except KeyboardInterrupt as stop:
        job.close()
        results.doc["status"] = "interrupted"
        results.write()
        stop.out = out  # type: ignore[attr-defined]
        raise
    job.close()
    return _complete(results, say)


def _complete(results: _Results, say: Callable[[str], None]) -> dict[str, Any]:
    """Mark the run complete: print the table, draw the plots, write the files."""
    config, ctx, out, s = results.config, results.ctx, results.out, results.config.settings
    doc = results.doc
    doc["status"] = "complete"
    doc["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
    variants = results.collect()
    say("")
    say(format_table(variants, s.transforms))
    acc_note = "accuracy in % on the test split" + (
        f" (mean±std over {len(doc['seeds'])} seeds)" if len(doc["seeds"]) > 1 else ""
    )
    mem_kind = next(iter(variants.values()))["runs"][0]["memory_kind"]
    say(f"{acc_note}; img/s = training throughput; peak MB = {mem_kind}")
    diverged = [
        f"{v} ({d['diverged']}/{len(d['runs'])})" for v, d in variants.items() if d["diverged"]
    ]
    if diverged:
        say(
            "runs that diverged (training loss not finite), left out of the accuracies: "
            + ", ".join(diverged)
        )
    if ctx.is_main and config.plots:
        title = f"{results.data.name}, {s.model}, {s.epochs} epochs"
        ok = plot_learning_curves(variants, out / PLOTS[0], title)
        ok = plot_robustness(variants, s.transforms, out / PLOTS[1], title) and ok
        if ok:
            doc["plots"] = list(PLOTS)
        else:
            say(
                "note: matplotlib is not installed, so no plots were drawn (pip install matplotlib)"
            )
    results.write()
    say(
        f"results: {out / 'results.json'}, {out / 'results.csv'}, {out / 'table.md'}"
        + (", plots" if doc.get("plots") else "")
    )
    ctx.barrier()
    return doc
