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

import dataclasses
import datetime as _dt
import json
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
from symconv.compare.errors import CompareError
from symconv.compare.models import check_int
from symconv.compare.outdir import FolderLock, latest_run, new_run_folder
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
    JobProgress,
    RunInterrupted,
    TrainSettings,
    _differences,
    check_checkpoint,
    setup_distributed,
    train_run,
)
from symconv.compare.transforms import TRANSFORMS
from symconv.compare.variants import VARIANTS, build_variant, parse_variants

__all__ = ["CompareConfig", "run_compare"]

RESULTS_FORMAT = "symconv-compare/1"
PLOTS = ("learning_curves.png", "robustness.png")
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
        d["settings"] = self.settings.to_dict()
        return d


def _fingerprint(config: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The options that determine the numbers: what a resumed run and its checkpoints
    must share."""
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


def _open_out(config: CompareConfig, fingerprint: dict[str, Any]) -> tuple[Path, FolderLock]:
    """The output folder, created if new and locked against other runs, checked against
    ``--resume``; raises :class:`CompareError` (or ``OSError``) when it cannot be used."""
    prefix = f"{_slug(config.data)}-{config.settings.model}-"
    if config.out is not None:
        out = Path(config.out)
        if out.exists() and not out.is_dir():
            raise CompareError(f"--out {out} is a file, not a folder")
        if not config.resume:
            out.mkdir(parents=True, exist_ok=True)
    elif config.resume:
        latest = latest_run(DEFAULT_ROOT, prefix)
        if latest is None:
            raise CompareError(
                f"--resume without --out looks for the latest {DEFAULT_ROOT}/{prefix}* run, "
                "and there is none; pass --out DIR"
            )
        out = latest
    else:
        out = new_run_folder(DEFAULT_ROOT, prefix)
    cfg_path = out / "config.json"
    if config.resume and not cfg_path.is_file():
        raise CompareError(f"--resume: {out} holds no run to continue (no {cfg_path.name})")
    # Everything below happens under the lock: no other run can start or change the
    # folder between the checks and the training.
    lock = FolderLock(out).acquire()
    try:
        if config.resume:
            saved = json.loads(cfg_path.read_text(encoding="utf-8"))
            previous = _fingerprint(saved.get("config", {}), saved.get("world_size", 1))
            differ = _differences(previous, fingerprint)
            if differ:
                raise CompareError(f"--resume: the options differ from the run in {out}: {differ}")
        elif cfg_path.is_file() or (out / "checkpoints").is_dir():
            raise CompareError(
                f"--out {out} already holds a compare run; pass --resume to continue it or "
                "choose another folder"
            )
    except BaseException:
        lock.release()
        raise
    return out, lock


_CHECKPOINT_NAME = re.compile(r"^(?P<variant>.+)-run(?P<run>\d+)\.pt$")


def _scan_checkpoints(
    store: CheckpointStore, config: CompareConfig, identity: dict[str, Any]
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str]]:
    """Every checkpoint in ``store``, checked: ``{(variant, run): state}`` without the
    weights, and notes on files that were passed over.

    Each must hold the variant and run its name says, the seed of that run and the
    options ``identity``; otherwise :class:`CompareError` says which file and why.
    """
    found: dict[tuple[str, int], dict[str, Any]] = {}
    notes = []
    if not store.folder.is_dir():
        return found, notes
    for path in sorted(store.folder.iterdir()):
        if path.name.startswith("."):  # a temporary file of an interrupted write
            continue
        m = _CHECKPOINT_NAME.match(path.name)
        if m is None or m["variant"] not in VARIANTS:
            notes.append(f"note: {path} is not a name symconv compare gives a checkpoint; ignored")
            continue
        variant, run = m["variant"], int(m["run"])
        state = store.read(path)
        if state is None:  # removed since it was listed
            continue
        check_checkpoint(state, path, variant, run, config.seed + run, identity)
        found[(variant, run)] = {k: state[k] for k in ("epoch", "finished", "result") if k in state}
    return found, notes


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


def print_line(message: str) -> None:
    """Print ``message`` to stdout now; if stdout is closed (``symconv compare | head``),
    stop printing instead of failing: the run goes on and writes its files."""
    global _STDOUT_CLOSED
    if _STDOUT_CLOSED:
        return
    try:
        print(message, flush=True)
    except BrokenPipeError:
        _STDOUT_CLOSED = True
        # Later writes, and the flush at exit, go nowhere instead of failing again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
            pass


_STDOUT_CLOSED = False


def _console(log: Callable[[str], None] | None) -> Callable[[str], None]:
    """``log``, or :func:`print_line` kept clear of progress bars (tqdm redraws them)."""
    if log is not None:
        return log
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return print_line

    def say(message: str) -> None:
        if not getattr(tqdm, "_instances", None):
            print_line(message)
            return
        with tqdm.external_write_mode(file=sys.stdout):
            print_line(message)

    return say


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
    say = _console(log) if ctx.is_main else (lambda _msg: None)
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


def _check_variants(config: CompareConfig, data: ImageData) -> None:
    """Build every variant once, so a spec that converts nothing fails before training."""
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
            )
        except ValueError as err:
            raise CompareError(str(err)) from err


def _run(
    config: CompareConfig, ctx: DistContext, say: Callable[[str], None], command: list[str] | None
) -> dict[str, Any]:
    started = time.time()
    try:
        data: ImageData = load_data(
            config.data,
            size=config.size,
            color=config.color,
            limit=config.limit,
            workers=config.workers,
        )
    except (ValueError, FileNotFoundError) as err:
        # load_data checks everything about --data and says what is wrong with it.
        raise CompareError(str(err)) from err
    _check_variants(config, data)
    identity = _fingerprint(config.to_dict(), ctx.world_size)

    lock: FolderLock | None = None

    def open_out() -> Path:
        nonlocal lock
        out, lock = _open_out(config, identity)
        return out

    try:
        out = _on_main(ctx, open_out)
        store = CheckpointStore(out / "checkpoints")
        found, notes = _on_main(ctx, lambda: _scan_checkpoints(store, config, identity))
        return _train_all(
            config, ctx, say, command, data, out, store, found, notes, started, identity
        )
    finally:
        if lock is not None:
            lock.release()


def _train_all(
    config: CompareConfig,
    ctx: DistContext,
    say: Callable[[str], None],
    command: list[str] | None,
    data: ImageData,
    out: Path,
    store: CheckpointStore,
    found: dict[tuple[str, int], dict[str, Any]],
    notes: list[str],
    started: float,
    identity: dict[str, Any],
) -> dict[str, Any]:
    s = config.settings
    config_dict = config.to_dict()
    config_dict["out"] = str(out)
    if ctx.is_main and not config.resume:
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
    for note in notes:
        say(note)
    progress = config.progress
    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("CI")
    budget = [config.max_epochs_this_run] if config.max_epochs_this_run else None
    seeds = [config.seed + r for r in range(config.runs)]

    # Finished runs, including those of variants and runs this invocation does not ask
    # for (a --resume with fewer --variants or --runs keeps them in every table and plot).
    finished: dict[str, dict[int, dict[str, Any]]] = {}
    for (variant, run), state in found.items():
        if state.get("finished"):
            finished.setdefault(variant, {})[run] = state["result"]
    kept = sorted(
        (v, r)
        for v, runs in finished.items()
        for r in runs
        if v not in config.variants or r >= config.runs
    )
    if kept:
        say(
            f"keeping {_plural(len(kept), 'finished run')} this invocation does not ask for: "
            + ", ".join(f"{v} run {r + 1}" for v, r in kept)
        )

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
        "plots": [],
    }

    def collect() -> None:
        order = [*config.variants, *(v for v in VARIANTS if v not in config.variants)]
        results["variants"] = {}
        for variant in order:
            runs = [finished[variant][r] for r in sorted(finished.get(variant, {}))]
            if runs:
                results["variants"][variant] = {
                    "params": runs[0]["params"],
                    "description": runs[0]["description"],
                    "converted": runs[0]["converted"],
                    "skipped": runs[0]["skipped"],
                    "runs": runs,
                    **summarise(runs),
                }
        results["seeds"] = sorted(
            set(seeds) | {r["seed"] for v in results["variants"].values() for r in v["runs"]}
        )

    def write_results() -> None:
        if not ctx.is_main:
            return
        collect()
        results["elapsed_s"] = time.time() - started
        write_json(out / "results.json", results)
        done = results["variants"]
        if done:
            write_csv(out / "results.csv", csv_rows(done, s.transforms))
            write_text(out / "table.md", format_markdown(done, s.transforms) + "\n")

    if ctx.is_main:
        # Plots are drawn when the job completes; until then older ones would disagree
        # with the tables.
        for name in PLOTS:
            (out / name).unlink(missing_ok=True)
    write_results()

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
            for r, seed in enumerate(seeds):
                job.start(variant, i, r)
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
                    label=f"{variant} run {r + 1}/{config.runs}",
                    budget=budget,
                    identity=identity,
                    job=job,
                )
                finished.setdefault(variant, {})[r] = res
                write_results()
    except RunInterrupted as stop:
        job.close()
        results["status"] = "interrupted"
        write_results()
        say(f"{stop}; continue with --resume --out {out}")
        return results
    except KeyboardInterrupt as stop:
        job.close()
        results["status"] = "interrupted"
        write_results()
        stop.out = out  # type: ignore[attr-defined]
        raise
    job.close()

    results["status"] = "complete"
    results["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
    collect()
    variants = results["variants"]
    say("")
    say(format_table(variants, s.transforms))
    acc_note = "accuracy in % on the test split" + (
        f" (mean±std over {len(results['seeds'])} seeds)" if len(results["seeds"]) > 1 else ""
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
        title = f"{data.name}, {s.model}, {s.epochs} epochs"
        ok = plot_learning_curves(variants, out / PLOTS[0], title)
        ok = plot_robustness(variants, s.transforms, out / PLOTS[1], title) and ok
        if ok:
            results["plots"] = list(PLOTS)
        else:
            say(
                "note: matplotlib is not installed, so no plots were drawn (pip install matplotlib)"
            )
    write_results()
    say(
        f"results: {out / 'results.json'}, {out / 'results.csv'}"
        + (", plots" if results.get("plots") else "")
    )
    ctx.barrier()
    return results
