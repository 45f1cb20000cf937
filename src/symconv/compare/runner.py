"""``run_compare``: load the data, train every (variant, run), write and print the results.

The output folder holds::

    config.json            the configuration (checked on --resume)
    results.json           every number, the configuration, versions, seeds
    results.csv            one row per variant: mean and std of every metric
    table.md               the terminal table in Markdown
    learning_curves.png    training loss and clean test accuracy per epoch
    robustness.png         accuracy per transformation and variant
    checkpoints/<variant>-run<k>.pt
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from symconv.compare import train as train_module
from symconv.compare.data import BUILTIN, ImageData, load_data
from symconv.compare.models import check_int
from symconv.compare.report import (
    csv_rows,
    format_markdown,
    format_table,
    plot_learning_curves,
    plot_robustness,
    summarise,
    write_csv,
    write_json,
    write_text,
)
from symconv.compare.train import (
    CheckpointStore,
    DistContext,
    RunInterrupted,
    TrainSettings,
    setup_distributed,
    train_run,
)
from symconv.compare.transforms import TRANSFORMS
from symconv.compare.variants import parse_variants

__all__ = ["CompareConfig", "run_compare"]

RESULTS_FORMAT = "symconv-compare/1"
DEFAULT_ROOT = Path("symconv-runs")
# Fields that may change between an interrupted run and its --resume.
_RESUMABLE = (
    "out",
    "resume",
    "device",
    "workers",
    "progress",
    "plots",
    "max_epochs_this_run",
    "variants",
    "runs",
)


@dataclass
class CompareConfig:
    """What ``symconv compare`` was asked to do (its command-line options)."""

    data: str = "mnist"
    variants: tuple[str, ...] = ("plain", "sym", "sym-inv", "twist")
    runs: int = 1
    seed: int = 0
    size: int | None = None
    color: str = "auto"
    limit: int | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    out: str | None = None
    resume: bool = False
    device: str = "auto"
    workers: int = 0
    progress: bool | None = None  # None: a bar when stderr is a terminal
    plots: bool = True
    max_epochs_this_run: int | None = None
    threads: int = 0  # 0: auto_threads()

    def __post_init__(self) -> None:
        if isinstance(self.variants, str):
            self.variants = tuple(parse_variants(self.variants))
        else:
            self.variants = tuple(parse_variants(",".join(self.variants)))
        check_int("runs", self.runs)
        check_int("seed", self.seed, 0)
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads={self.threads!r} must be an integer >= 0 (0: automatic)")
        if self.max_epochs_this_run is not None and self.max_epochs_this_run < 1:
            raise ValueError(f"max_epochs_this_run={self.max_epochs_this_run!r} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variants"] = list(self.variants)
        d["settings"]["transforms"] = list(self.settings.transforms)
        return d


def _fingerprint(config: dict[str, Any], world_size: int) -> dict[str, Any]:
    d = {k: v for k, v in config.items() if k not in _RESUMABLE}
    d["world_size"] = world_size
    return d


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _slug(data: str) -> str:
    name = data if data.lower() in BUILTIN else (Path(data).resolve().name or "data")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


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
        "malloc_keeps_freed_memory": train_module._MALLOC_TUNED,
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


def _prepare_out(config: CompareConfig, world_size: int) -> tuple[Path | None, str | None]:
    """Resolve the output folder and check it against ``--resume``; (path, error)."""
    if config.out is not None:
        out = Path(config.out)
    elif config.resume:
        prefix = f"{_slug(config.data)}-{config.settings.model}-"
        candidates = sorted(
            p for p in DEFAULT_ROOT.glob(prefix + "*") if (p / "config.json").is_file()
        )
        if not candidates:
            return None, (
                f"--resume without --out looks for the latest {DEFAULT_ROOT}/{prefix}* run, and "
                "there is none; pass --out DIR"
            )
        out = candidates[-1]
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = DEFAULT_ROOT / f"{_slug(config.data)}-{config.settings.model}-{stamp}"
    cfg_path = out / "config.json"
    if out.exists() and not out.is_dir():
        return None, f"--out {out} is a file, not a folder"
    current = _fingerprint(config.to_dict(), world_size)
    if config.resume:
        if not cfg_path.is_file():
            return None, f"--resume: {out} holds no run to continue (no {cfg_path.name})"
        import json

        saved = json.loads(cfg_path.read_text(encoding="utf-8"))
        previous = _fingerprint(saved.get("config", {}), saved.get("world_size", 1))
        differ = sorted(
            k for k in set(current) | set(previous) if current.get(k) != previous.get(k)
        )
        if differ:
            details = "; ".join(
                f"{k}: was {previous.get(k)!r}, now {current.get(k)!r}" for k in differ
            )
            return None, f"--resume: the options differ from the run in {out}: {details}"
    elif cfg_path.is_file() or (out / "checkpoints").is_dir():
        return None, (
            f"--out {out} already holds a compare run; pass --resume to continue it or choose "
            "another folder"
        )
    return out, None


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

    Raises ``ValueError``/``FileNotFoundError`` for bad input before anything trains.
    """
    ctx = setup_distributed(config.device)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    elif ctx.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(auto_threads(local))
    say = (log or print) if ctx.is_main else (lambda _msg: None)
    try:
        results = _run(config, ctx, say, command)
        # No rank tears the process group down while a peer may still use it: gloo can
        # abort a process whose peer vanished mid-conversation.
        ctx.barrier()
        return results
    finally:
        torch.set_num_threads(threads)
        ctx.close()


def _run(
    config: CompareConfig, ctx: DistContext, say: Callable[[str], None], command: list[str] | None
) -> dict[str, Any]:
    started = time.time()
    s = config.settings
    data: ImageData = load_data(
        config.data,
        size=config.size,
        color=config.color,
        limit=config.limit,
        workers=config.workers,
    )
    out, error = _prepare_out(config, ctx.world_size) if ctx.is_main else (None, None)
    out, error = ctx.broadcast_object((out, error))
    if error is not None or out is None:
        raise ValueError(error)
    config_dict = config.to_dict()
    config_dict["out"] = str(out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not config.resume:
            write_json(out / "config.json", {"config": config_dict, "world_size": ctx.world_size})
    ctx.barrier()

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
    progress = config.progress
    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("CI")
    store = CheckpointStore(out / "checkpoints")
    budget = [config.max_epochs_this_run] if config.max_epochs_this_run else None
    seeds = [config.seed + r for r in range(config.runs)]
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "status": "running",
        "command": command,
        "config": config_dict,
        "data": data.describe(),
        "environment": _environment(ctx),
        "seeds": seeds,
        "transforms": {t: TRANSFORMS[t].description for t in s.transforms},
        "variants": {},
        "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
    }

    def write_results() -> None:
        if not ctx.is_main:
            return
        results["elapsed_s"] = time.time() - started
        write_json(out / "results.json", results)
        done = {k: v for k, v in results["variants"].items() if v["runs"]}
        if done:
            write_csv(out / "results.csv", csv_rows(done, s.transforms))
            write_text(out / "table.md", format_markdown(done, s.transforms) + "\n")

    try:
        for variant in config.variants:
            runs: list[dict[str, Any]] = []
            for r, seed in enumerate(seeds):
                label = f"{variant} run {r + 1}/{config.runs}"
                res = train_run(
                    variant,
                    r,
                    seed,
                    data,
                    s,
                    ctx,
                    store,
                    log=say,
                    progress=progress,
                    label=label,
                    budget=budget,
                )
                runs.append(res)
                results["variants"][variant] = {
                    "params": res["params"],
                    "description": res["description"],
                    "converted": res["converted"],
                    "skipped": res["skipped"],
                    "runs": runs,
                    **summarise(runs),
                }
                write_results()
    except RunInterrupted as stop:
        results["status"] = "interrupted"
        write_results()
        say(f"{stop}; continue with --resume --out {out}")
        return results

    results["status"] = "complete"
    results["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
    variants = results["variants"]
    say("")
    say(format_table(variants, s.transforms))
    acc_note = "accuracy in % on the test split" + (
        f" (mean±std over {config.runs} seeds)" if config.runs > 1 else ""
    )
    mem_kind = next(iter(variants.values()))["runs"][0]["memory_kind"]
    say(f"{acc_note}; img/s = training throughput; peak MB = {mem_kind}")
    if ctx.is_main:
        results["plots"] = []
        if config.plots:
            title = f"{data.name}, {s.model}, {s.epochs} epochs"
            ok = plot_learning_curves(variants, out / "learning_curves.png", title)
            ok = plot_robustness(variants, s.transforms, out / "robustness.png", title) and ok
            if ok:
                results["plots"] = ["learning_curves.png", "robustness.png"]
            else:
                say(
                    "note: matplotlib is not installed, so no plots were drawn "
                    "(pip install matplotlib)"
                )
    write_results()
    say(
        f"results: {out / 'results.json'}, {out / 'results.csv'}"
        + (", plots" if results.get("plots") else "")
    )
    ctx.barrier()
    return results
