"""Training and evaluation for ``symconv compare``: one loop for CPU, GPU and DDP.

The whole dataset lives in memory as uint8 tensors, so batches are index gathers (no
DataLoader workers to start). Each ``(variant, run)`` pair trains from its own seed with
AdamW, a one-cycle learning-rate schedule and label smoothing, and writes a checkpoint
after every epoch (model, optimiser, scheduler, RNG states of every process, history),
atomically; ``resume`` continues from it and reproduces an uninterrupted run exactly on
the CPU. Under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` (NCCL on
GPU, gloo on CPU), the training split is sharded with ``DistributedSampler`` and the
global batch size is split between the processes; evaluation is sharded too, and only
rank 0 writes files or prints.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from symconv.compare.data import ImageData
from symconv.compare.errors import CompareError
from symconv.compare.models import DEFAULT_WIDTH
from symconv.compare.report import atomic_write
from symconv.compare.transforms import TRANSFORMS, affine_theta
from symconv.compare.variants import build_variant, count_parameters
from symconv.symmetry import make_plan

__all__ = [
    "CheckpointStore",
    "DistContext",
    "JobProgress",
    "Normaliser",
    "RunInterrupted",
    "TrainSettings",
    "check_checkpoint",
    "evaluate",
    "keep_freed_memory",
    "one_cycle",
    "peak_memory",
    "random_affine",
    "setup_distributed",
    "train_run",
]

#: 2: checkpoints record the settings and the network they were made with.
CHECKPOINT_FORMAT = 2


class RunInterrupted(Exception):
    """Training stopped early on request (``--max-epochs-this-run``); resume to finish."""


# -- processes and devices ---------------------------------------------------------------


@dataclass
class DistContext:
    """Where this process runs: its device and its place among the processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

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
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str = "auto") -> DistContext:
    """Pick the device and, under ``torchrun`` (``WORLD_SIZE > 1``), join the process group."""
    if device not in ("auto", "cpu", "cuda"):
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


# -- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a run's numbers (recorded in ``results.json``)."""

    model: str = "cnn"
    width: int | None = None
    symmetry: str = "hv:50%"
    invariant_key: str = "hv"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: bool = False
    eval_batch_size: int = 500
    transforms: tuple[str, ...] = tuple(TRANSFORMS)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not (isinstance(self.lr, float | int) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr!r} must be a positive number")
        if not (isinstance(self.weight_decay, float | int) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        for t in self.transforms:
            if t not in TRANSFORMS:
                raise ValueError(f"unknown transform {t!r}; allowed: {', '.join(TRANSFORMS)}")
        # A bad spec fails here, not after the first variants have trained.
        make_plan(self.symmetry, 64, 2)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), as in ``results.json`` and the checkpoints."""
        d = dataclasses.asdict(self)
        d["transforms"] = list(self.transforms)
        return d


# -- data on the device ------------------------------------------------------------------


class Normaliser:
    """uint8 ``(N, C, H, W)`` -> float ``[0, 1]`` -> standardised with the train statistics."""

    def __init__(self, train_images: Tensor, device: torch.device | None = None) -> None:
        x = train_images.double() / 255
        # Kept on ``device`` (where the batches are): no copy of the statistics per batch.
        self.mean = x.mean((0, 2, 3)).float().view(1, -1, 1, 1).to(device)
        self.std = x.std((0, 2, 3)).clamp_min(1e-3).float().view(1, -1, 1, 1).to(device)

    def to_unit(self, images: Tensor, device: torch.device) -> Tensor:
        return images.to(device, non_blocking=True).float().div_(255)

    def standardise(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def random_affine(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``--augment``: per-image shifts of up to 1/8 of the side, +-10 degrees, 0.9-1.1x.

    Deliberately no flips, so flip robustness still comes from the architecture alone.
    """
    n, _, h, w = x.shape
    params = torch.rand(n, 4, generator=generator)
    deg = (params[:, 0] * 2 - 1) * 10
    scale = 0.9 + params[:, 1] * 0.2
    shift = (params[:, 2:] * 2 - 1) / 4  # normalised units: 1/8 of the side
    rad = deg * math.pi / 180
    theta = affine_theta(torch.cos(rad), torch.sin(rad), scale, h, w, shift).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    norm: Normaliser,
    device: torch.device,
    transform: Callable[[Tensor], Tensor] = lambda x: x,
    batch_size: int = 500,
    ctx: DistContext | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``transform(images)``; sharded over DDP ranks."""
    was_training = model.training
    model.eval()
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    idx = torch.arange(rank, len(labels), world, device=images.device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        x = norm.standardise(transform(norm.to_unit(images[b], device)))
        with _autocast(device):
            logits = model(x.contiguous(memory_format=fmt))
        correct += (logits.argmax(1) == labels[b].to(device)).sum()
    if ctx is not None and ctx.distributed:
        dist.all_reduce(correct)
    model.train(was_training)
    return float(correct.item()) / len(labels)


# -- memory ------------------------------------------------------------------------------

_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep big freed blocks for reuse (Linux only; process-wide).

    By default glibc serves blocks over a (dynamic, at most 32 MiB) threshold with
    ``mmap`` and unmaps them on ``free``, so every training step on the CPU page-faults
    its activation buffers in again: a third or more of the epoch spent in the kernel.
    Raising the mmap and trim thresholds to 1 GiB makes freed buffers reusable, so CPU
    steps stop paying those page faults; the price is that the process keeps its peak heap.
    Called by the ``symconv compare`` command, not by the library functions.
    """
    global _MALLOC_TUNED
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    _MALLOC_TUNED = ok
    return ok


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0: writing 5 resets the process's peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> tuple[float, str]:
    """``(megabytes, what was measured)`` since :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "process peak RSS (VmHWM) during the run"
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    divisor = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return peak / divisor, "process peak RSS since start (getrusage)"


# -- checkpoints -------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as plain Python values (bytes, ints): safe for ``weights_only``
    loading and for ``all_gather_object``."""
    # numpy's legacy global generator: compare itself does not draw from it, but user
    # hooks might, and resuming must restore every source of randomness.
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "torch": bytes(torch.get_rng_state().numpy()),
        "cuda": [bytes(t.numpy()) for t in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def _bytes_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(b) for b in state["cuda"]])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(state["python"])


class CheckpointStore:
    """``<out>/checkpoints/<variant>-run<k>.pt``, replaced atomically after every epoch."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, variant: str, run: int) -> Path:
        return self.folder / f"{variant}-run{run}.pt"

    def load(self, variant: str, run: int) -> dict[str, Any] | None:
        """The checkpoint of ``(variant, run)``, None if there is none.

        ``OSError`` when it cannot be read; :class:`CompareError` when it is not a
        checkpoint of this symconv version (which does not say it is the right one: see
        :func:`check_checkpoint`).
        """
        return self.read(self.path(variant, run))

    @staticmethod
    def read(path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise CompareError(
                f"cannot read checkpoint {path}: {str(err).splitlines()[0]}"
            ) from err
        if not isinstance(state, dict) or "format" not in state:
            raise CompareError(f"{path} is not a symconv compare checkpoint")
        if state["format"] != CHECKPOINT_FORMAT:
            raise CompareError(
                f"{path} is a symconv compare checkpoint of format {state['format']!r}; this "
                f"version reads format {CHECKPOINT_FORMAT} (older ones do not record their "
                "settings): start a new run in another --out"
            )
        return state

    def save(self, variant: str, run: int, state: dict[str, Any]) -> None:
        atomic_write(self.path(variant, run), lambda fh: torch.save(state, fh))


def _differences(was: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    keys = sorted(set(was) | set(now))
    return "; ".join(
        f"{k}: was {was.get(k)!r}, now {now.get(k)!r}" for k in keys if was.get(k) != now.get(k)
    )


def check_checkpoint(
    state: Mapping[str, Any],
    path: Path,
    variant: str,
    run: int,
    seed: int,
    identity: Mapping[str, Any],
    build: Mapping[str, Any] | None = None,
) -> None:
    """Raise :class:`CompareError` unless ``state`` is the checkpoint of ``(variant, run)``
    made with ``seed``, the options ``identity`` and (when given) the network ``build``.

    A checkpoint copied or renamed from another variant or run, or made with other
    options, is refused rather than continued or reported as this one.
    """
    got = (state.get("variant"), state.get("run"), state.get("seed"))
    if got != (variant, run, seed):
        raise CompareError(
            f"{path} holds {got[0]!r} run {got[1]} (seed {got[2]}), not {variant!r} run {run} "
            f"(seed {seed}): a copied or renamed checkpoint? Move it away to train this run "
            "again"
        )
    if state.get("config") != dict(identity):
        raise CompareError(
            f"{path} was made with other options than this run: "
            f"{_differences(state.get('config') or {}, identity)}"
        )
    if build is not None and state.get("build") != dict(build):
        raise CompareError(
            f"{path} holds a different network than the data and options give now (has the "
            f"data changed?): {_differences(state.get('build') or {}, build)}"
        )


class JobProgress:
    """Where the whole job stands: variant i of n, run, epochs done of all, elapsed, ETA.

    The ETA assumes the epochs still to come take as long as those done so far in this
    invocation. With ``bar`` (and tqdm installed) a progress bar shows the same above the
    per-epoch bar.
    """

    def __init__(self, total_epochs: int, variants: int, runs: int, bar: bool = False) -> None:
        self.total = total_epochs
        self.variants, self.runs = variants, runs
        self.variant_index, self.run_index, self.done = 0, 0, 0
        self.started = time.perf_counter()
        self.bar = _tqdm(bar, total=total_epochs, desc="job", unit="epoch", position=0)

    def start(self, variant: str, variant_index: int, run_index: int) -> None:
        self.variant_index, self.run_index = variant_index, run_index
        if self.bar is not None:
            self.bar.set_description(
                f"job: {variant} (variant {variant_index + 1}/{self.variants}), "
                f"run {run_index + 1}/{self.runs}"
            )

    def epoch_done(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def describe(self) -> str:
        elapsed = time.perf_counter() - self.started
        text = (
            f"variant {self.variant_index + 1}/{self.variants}, job epoch {self.done}/"
            f"{self.total}, {_clock(elapsed)} elapsed"
        )
        if self.done:
            text += f", ETA {_clock(elapsed / self.done * (self.total - self.done))}"
        return text

    def skip(self, epochs: int) -> None:
        """``epochs`` of the job that will not be trained (a run that diverged)."""
        self.total -= epochs
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# -- one (variant, run) ------------------------------------------------------------------


def _batches(n: int, batch: int) -> Iterator[slice]:
    if n <= batch:
        yield slice(0, n)
        return
    for start in range(0, n - batch + 1, batch):  # drop the ragged last batch
        yield slice(start, start + batch)


def _make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    # No weight decay on biases, norms, and the ConvTwist centres (all 1-D).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": s.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=s.lr,
    )


def one_cycle(total_steps: int, warmup: float = 0.25) -> Callable[[int], float]:
    """The one-cycle factor on the peak learning rate at each optimiser step.

    Linear warm-up from 1/25 of the peak over the first ``warmup`` of the steps, then a
    cosine decay to 1/10^4 of it (the shape of ``OneCycleLR``, which cannot handle the
    handful of steps of a quick run).
    """
    warm = max(1, round(warmup * total_steps))
    start, final = 1 / 25, 1e-4

    def factor(step: int) -> float:
        if step < warm:
            return start + (1 - start) * step / warm
        p = min(1.0, (step - warm) / max(1, total_steps - warm))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))

    return factor


def steady_images_per_s(history: list[dict[str, Any]]) -> float:
    """Training throughput of a run: the median of its epochs' images/s after the first.

    The first epoch pays one-off costs (cuDNN autotuning, oneDNN primitive creation, the
    allocator's first growth) that say nothing about the layer's speed; it is used only
    when it is the only epoch.
    """
    rates = [r["images_per_s"] for r in history]
    if not rates:
        return float("nan")
    return statistics.median(rates[1:] or rates)


def train_run(
    variant: str,
    run: int,
    seed: int,
    data: ImageData,
    settings: TrainSettings,
    ctx: DistContext,
    store: CheckpointStore | None,
    *,
    log: Callable[[str], None] = print,
    progress: bool = False,
    label: str = "",
    budget: list[int] | None = None,
    identity: Mapping[str, Any] | None = None,
    job: JobProgress | None = None,
) -> dict[str, Any]:
    """Train and evaluate one ``(variant, run)``; returns its result record.

    ``budget`` is a one-element list of epochs this invocation may still train (for
    ``--max-epochs-this-run``): at zero, :class:`RunInterrupted` is raised before the next
    epoch would start (the last one is checkpointed). ``identity`` (default: the
    settings) is recorded in the checkpoint, and a checkpoint found in ``store`` is
    continued only if it records the same one, ``variant``, ``run`` and ``seed`` (see
    :func:`check_checkpoint`). A run whose training loss stops being finite is stopped
    and reported with ``diverged`` (the epoch) and NaN accuracies.
    """
    device = ctx.device
    s = settings
    identity = dict(identity) if identity is not None else {"settings": s.to_dict()}
    build = {
        "model": s.model,
        "in_channels": data.channels,
        "num_classes": data.num_classes,
        "size": min(data.size),
        # resolved, so the checkpoint rebuilds the same network if the default changes
        "width": s.width or DEFAULT_WIDTH[s.model],
        "symmetry": s.symmetry,
        "invariant_key": s.invariant_key,
    }
    state = store.load(variant, run) if store is not None else None
    if state is not None:
        check_checkpoint(state, store.path(variant, run), variant, run, seed, identity, build)  # type: ignore[union-attr]
    if state is not None and state.get("finished"):
        log(f"{label}: finished earlier, taken from {store.path(variant, run)}")  # type: ignore[union-attr]
        return state["result"]

    torch.manual_seed(seed)
    built = build_variant(variant, **build)
    model = built.model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = count_parameters(model)
    norm = Normaliser(data.train_images, device)
    n_train = len(data.train_labels)
    per_rank_batch = max(1, math.ceil(s.batch_size / ctx.world_size))
    per_rank_n = math.ceil(n_train / ctx.world_size)
    steps = len(list(_batches(per_rank_n, per_rank_batch)))
    optimizer = _make_optimizer(model, s)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(s.epochs * steps))
    sampler = torch.utils.data.DistributedSampler(
        range(n_train), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed
    )
    history: list[dict[str, float]] = []
    train_seconds, images_seen, start_epoch = 0.0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        train_seconds, images_seen = state["train_seconds"], state["images_seen"]
        start_epoch = state["epoch"]
        _set_rng_state(state["rng"][min(ctx.rank, len(state["rng"]) - 1)])
        log(f"{label}: resuming after epoch {start_epoch}/{s.epochs}")

    ddp_model: nn.Module = model
    if ctx.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    # On a GPU the uint8 dataset lives there (a few MB to a few hundred): batches are then
    # device-side gathers, with no host-to-device copy per step.
    train_images = data.train_images.to(device)
    train_labels = data.train_labels.to(device)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)
    reset_peak_memory(device)

    def save_checkpoint(epoch: int, finished: bool, **extra: Any) -> None:
        rng = _gather_rng(ctx)  # a collective: every rank takes part
        if store is None or not ctx.is_main:
            return
        store.save(
            variant,
            run,
            {
                "format": CHECKPOINT_FORMAT,
                "variant": variant,
                "run": run,
                "seed": seed,
                "config": identity,
                "build": build,
                "epoch": epoch,
                "finished": finished,
                "model": model.state_dict(),
                "rng": rng,
                "history": history,
                "train_seconds": train_seconds,
                "images_seen": images_seen,
                **extra,
            },
        )

    diverged: int | None = None
    for epoch in range(start_epoch, s.epochs):
        if budget is not None and budget[0] <= 0:
            ctx.barrier()
            raise RunInterrupted(f"{label}: stopped before epoch {epoch + 1}/{s.epochs}")
        sampler.set_epoch(epoch)
        # On the device once per epoch: a per-step host-to-device copy of the batch's
        # indices (and of a count) would make every CUDA step wait for the previous one.
        order = torch.tensor(list(sampler), dtype=torch.int64, device=device)
        ddp_model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        bar = _tqdm(
            progress and ctx.is_main,
            total=steps,
            desc=f"{label} epoch {epoch + 1}",
            unit="batch",
            position=1 if job is not None and job.bar is not None else 0,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for sl in _batches(len(order), per_rank_batch):
            idx = order[sl]
            x = norm.to_unit(train_images[idx], device)
            y = train_labels[idx]
            if s.augment:
                x = random_affine(x)
            x = norm.standardise(x).contiguous(memory_format=fmt)
            with _autocast(device):
                logits = ddp_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=s.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            totals += torch.stack(
                [
                    loss.detach().double() * len(y),
                    (logits.argmax(1) == y).sum().double(),
                    torch.full((), float(len(y)), dtype=torch.float64, device=device),
                ]
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if ctx.distributed:
            dist.all_reduce(totals)
            # the slowest process sets the pace
            sec = torch.tensor([seconds], dtype=torch.float64, device=device)
            dist.all_reduce(sec, op=dist.ReduceOp.MAX)
            seconds = float(sec.item())
            _sync_buffers(model)
        loss_sum, correct, count = (float(v) for v in totals.tolist())
        train_seconds += seconds
        images_seen += int(count)
        test_acc = evaluate(
            model,
            test_images,
            test_labels,
            norm,
            device,
            batch_size=s.eval_batch_size,
            ctx=ctx,
        )
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            "test_acc": test_acc,
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": seconds,
            "images_per_s": count / seconds if seconds > 0 else float("nan"),
        }
        history.append(record)
        if job is not None:
            job.epoch_done()
            if not math.isfinite(loss_sum):
                job.skip(s.epochs - epoch - 1)
        tag = f"  [{job.describe()}]" if job is not None else ""
        if not math.isfinite(loss_sum):
            # Every later step would be NaN too, and the scores would be chance level.
            diverged = epoch + 1
            log(
                f"{label} epoch {epoch + 1}/{s.epochs}: loss {loss_sum / count} - diverged; "
                f"this run stops here (a lower --lr may help){tag}"
            )
            break
        log(
            f"{label} epoch {epoch + 1}/{s.epochs}: loss {record['train_loss']:.4f}  "
            f"train {100 * record['train_acc']:.2f}%  test {100 * test_acc:.2f}%  "
            f"{record['images_per_s']:.0f} img/s  {seconds:.1f}s{tag}"
        )
        save_checkpoint(
            epoch + 1,
            finished=False,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
        )
        if budget is not None:
            budget[0] -= 1

    memory_mb, memory_kind = peak_memory(device)
    accuracy = {
        t: math.nan
        if diverged
        else evaluate(
            model,
            test_images,
            test_labels,
            norm,
            device,
            TRANSFORMS[t],
            batch_size=s.eval_batch_size,
            ctx=ctx,
        )
        for t in s.transforms
    }
    result = {
        "variant": variant,
        "run": run,
        "seed": seed,
        "params": params,
        "description": built.description,
        "converted": built.converted,
        "skipped": built.skipped,
        "accuracy": accuracy,
        "images_per_s": steady_images_per_s(history),
        "train_seconds": train_seconds,
        "peak_memory_mb": memory_mb,
        "memory_kind": memory_kind,
        "history": history,
        "diverged": diverged,
    }
    save_checkpoint(len(history), finished=True, result=result)
    ctx.barrier()
    return result


def _sync_buffers(model: nn.Module) -> None:
    """Rank 0's batch-norm statistics everywhere, so every rank evaluates the same model."""
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def _gather_rng(ctx: DistContext) -> list[dict[str, Any]]:
    state = _rng_state()
    if not ctx.distributed:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states


def _tqdm(enabled: bool, **kwargs: Any):  # type: ignore[no-untyped-def]
    """A tqdm bar on stderr, or None when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(leave=False, dynamic_ncols=True, file=sys.stderr, **kwargs)
