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

import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
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
from symconv.compare.report import atomic_write
from symconv.compare.transforms import TRANSFORMS, affine_theta
from symconv.compare.variants import build_variant, count_parameters
from symconv.symmetry import make_plan

__all__ = [
    "CheckpointStore",
    "DistContext",
    "Normaliser",
    "RunInterrupted",
    "TrainSettings",
    "evaluate",
    "keep_freed_memory",
    "one_cycle",
    "peak_memory",
    "random_affine",
    "setup_distributed",
    "train_run",
]

CHECKPOINT_FORMAT = 1


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
    epochs: int = 5
    batch_size: int = 128
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
    Raising the mmap and trim thresholds to 1 GiB makes freed buffers reusable, which
    measured 1.6x faster CPU steps; the price is that the process keeps its peak heap.
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
        path = self.path(variant, run)
        if not path.is_file():
            return None
        try:
            # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: say which
            raise ValueError(f"cannot read checkpoint {path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a symconv compare checkpoint (format 1)")
        return state

    def save(self, variant: str, run: int, state: dict[str, Any]) -> None:
        atomic_write(self.path(variant, run), lambda tmp: torch.save(state, tmp))


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
) -> dict[str, Any]:
    """Train and evaluate one ``(variant, run)``; returns its result record.

    ``budget`` is a one-element list of epochs this invocation may still train (for
    ``--max-epochs-this-run``): at zero, :class:`RunInterrupted` is raised before the next
    epoch would start (the last one is checkpointed).
    """
    device = ctx.device
    s = settings
    state = store.load(variant, run) if store is not None else None
    if state is not None and state.get("finished"):
        log(f"{label}: finished earlier, taken from {store.path(variant, run)}")  # type: ignore[union-attr]
        return state["result"]

    torch.manual_seed(seed)
    built = build_variant(
        variant,
        s.model,
        data.channels,
        data.num_classes,
        size=min(data.size),
        width=s.width,
        symmetry=s.symmetry,
        invariant_key=s.invariant_key,
    )
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
        bar = _progress_bar(progress and ctx.is_main, steps, f"{label} epoch {epoch + 1}")
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
        log(
            f"{label} epoch {epoch + 1}/{s.epochs}: loss {record['train_loss']:.4f}  "
            f"train {100 * record['train_acc']:.2f}%  test {100 * test_acc:.2f}%  "
            f"{record['images_per_s']:.0f} img/s  {seconds:.1f}s"
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
        t: evaluate(
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
        "images_per_s": images_seen / train_seconds if train_seconds > 0 else float("nan"),
        "train_seconds": train_seconds,
        "peak_memory_mb": memory_mb,
        "memory_kind": memory_kind,
        "history": history,
    }
    save_checkpoint(s.epochs, finished=True, result=result)
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


def _progress_bar(enabled: bool, total: int, desc: str):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True, file=sys.stderr
    )
