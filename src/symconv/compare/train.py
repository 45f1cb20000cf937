"""Training and evaluation for ``symconv compare``: one loop for CPU, GPU and DDP.

The whole dataset lives in memory as uint8 tensors, so batches are index gathers (no
DataLoader workers to start). Each ``(variant, run)`` pair trains from its own seed with
AdamW, a one-cycle learning-rate schedule and label smoothing, and writes a checkpoint
after every epoch (:mod:`symconv.checkpoint` says what it holds), atomically; ``resume``
continues from it and reproduces an uninterrupted run exactly on the CPU. Under
``torchrun`` the model is wrapped in ``DistributedDataParallel``, the training split is
sharded with ``DistributedSampler`` and the global batch size is split between the
processes; evaluation is sharded too, and only rank 0 writes files or prints.

Processes and devices live in :mod:`~symconv.compare.distributed`, checkpoints in
:mod:`~symconv.compare.checkpoints`, the optimizer and its schedule in
:mod:`~symconv.compare.optim`, memory probes in :mod:`~symconv.compare.memory` and
progress display in :mod:`~symconv.compare.progress`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from symconv.checkpoint import COMPARE_FORMAT, set_rng_state
from symconv.compare.checkpoints import CheckpointStore, check_checkpoint
from symconv.compare.config import DEFAULT_WIDTH, TrainSettings
from symconv.compare.data import ImageData
from symconv.compare.distributed import DistContext, gather_rng, sync_buffers
from symconv.compare.memory import peak_memory, reset_peak_memory
from symconv.compare.optim import batches, make_optimizer, one_cycle
from symconv.compare.progress import JobProgress, progress_bar
from symconv.compare.report import steady_images_per_s
from symconv.compare.transforms import TRANSFORMS, affine_theta
from symconv.compare.variants import BuiltVariant, build_variant, count_parameters

__all__ = [
    "Normalizer",
    "RunInterrupted",
    "TrainSettings",
    "build_args",
    "evaluate",
    "random_affine",
    "train_run",
]


class RunInterrupted(Exception):
    """Training stopped early on request (``--max-epochs-this-run``); resume to finish."""


# -- data on the device ------------------------------------------------------------------


class Normalizer:
    """uint8 ``(N, C, H, W)`` -> float ``[0, 1]`` -> standardized with the train statistics."""

    def __init__(self, train_images: Tensor, device: torch.device | None = None) -> None:
        x = train_images.double() / 255
        # Kept on ``device`` (where the batches are): no copy of the statistics per batch.
        self.mean = x.mean((0, 2, 3)).float().view(1, -1, 1, 1).to(device)
        self.std = x.std((0, 2, 3)).clamp_min(1e-3).float().view(1, -1, 1, 1).to(device)

    def to_unit(self, images: Tensor, device: torch.device) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> float32 in ``[0, 1]`` on ``device``."""
        return images.to(device, non_blocking=True).float().div_(255)

    def standardize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel, ``(N, C, H, W)``."""
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def random_affine(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``--augment``: per-image shifts of up to 1/8 of the side, +-10 degrees, 0.9-1.1x.

    Deliberately no flips, so flip robustness still comes from the architecture alone.
    """
    n, _, h, w = x.shape
    params = torch.rand(n, 4, generator=generator)
    deg = (params[:, 0] * 2 - 1) * 10
    scale = 0.9 + params[:, 1] * 0.2
    shift = (params[:, 2:] * 2 - 1) / 4  # normalized units: 1/8 of the side
    rad = deg * math.pi / 180
    theta = affine_theta(torch.cos(rad), torch.sin(rad), scale, h, w, shift).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _memory_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    norm: Normalizer,
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
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        x = norm.standardize(transform(norm.to_unit(images[b], device)))
        with _autocast(device):
            logits = model(x.contiguous(memory_format=_memory_format(device)))
        correct += (logits.argmax(1) == labels[b].to(device)).sum()
    if ctx is not None and ctx.distributed:
        dist.all_reduce(correct)
    model.train(was_training)
    return float(correct.item()) / len(labels)


# -- one (variant, run) ------------------------------------------------------------------


class _Trainer:
    """The model, optimizer, schedule, data and counters of one ``(variant, run)``.

    Built after ``torch.manual_seed(seed)`` and :func:`build_variant`; nothing here draws
    from the global RNG except the ``--augment`` transform, so a resumed run continues
    exactly where the checkpointed one stopped.
    """

    def __init__(
        self, built: BuiltVariant, data: ImageData, s: TrainSettings, ctx: DistContext, seed: int
    ) -> None:
        device = ctx.device
        self.s, self.ctx, self.device = s, ctx, device
        self.model = built.model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = count_parameters(self.model)
        self.norm = Normalizer(data.train_images, device)
        n_train = len(data.train_labels)
        self.per_rank_batch = max(1, math.ceil(s.batch_size / ctx.world_size))
        per_rank_n = math.ceil(n_train / ctx.world_size)
        self.steps = len(list(batches(per_rank_n, self.per_rank_batch)))
        self.optimizer = make_optimizer(self.model, s)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, one_cycle(s.epochs * self.steps)
        )
        self.sampler = torch.utils.data.DistributedSampler(
            range(n_train), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed
        )
        self.data = data
        self.history: list[dict[str, float]] = []
        self.train_seconds, self.images_seen, self.epoch = 0.0, 0, 0

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from an unfinished checkpoint (weights, optimizer, schedule, RNGs)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        self.epoch = state["epoch"]
        set_rng_state(state["rng"][min(self.ctx.rank, len(state["rng"]) - 1)])

    def start(self) -> None:
        """Wrap the model for DDP and put the data on the device, just before training."""
        device = self.device
        self.ddp_model: nn.Module = self.model
        if self.ctx.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        # On a GPU the uint8 dataset lives there (a few MB to a few hundred): batches are
        # then device-side gathers, with no host-to-device copy per step.
        self.train_images = self.data.train_images.to(device)
        self.train_labels = self.data.train_labels.to(device)
        self.test_images = self.data.test_images.to(device)
        self.test_labels = self.data.test_labels.to(device)
        reset_peak_memory(device)

    def train_epoch(self, epoch: int, bar: Any) -> tuple[Tensor, float]:
        """One epoch of steps: ``(totals, seconds)``, totals = (loss sum, correct, count)
        over every rank, seconds of the slowest rank."""
        device = self.device
        self.sampler.set_epoch(epoch)
        # On the device once per epoch: a per-step host-to-device copy of the batch's
        # indices (and of a count) would make every CUDA step wait for the previous one.
        order = torch.tensor(list(self.sampler), dtype=torch.int64, device=device)
        self.ddp_model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for sl in batches(len(order), self.per_rank_batch):
            loss, correct, count = self._step(order[sl])
            totals += torch.stack([loss.detach().double() * count, correct, count])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if self.ctx.distributed:
            dist.all_reduce(totals)
            # the slowest process sets the pace
            sec = torch.tensor([seconds], dtype=torch.float64, device=device)
            dist.all_reduce(sec, op=dist.ReduceOp.MAX)
            seconds = float(sec.item())
            sync_buffers(self.model)
        return totals, seconds

    def _step(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One optimizer step on the images ``idx``: (loss, correct, count) as tensors."""
        s, device = self.s, self.device
        x = self.norm.to_unit(self.train_images[idx], device)
        y = self.train_labels[idx]
        if s.augment:
            x = random_affine(x)
        x = self.norm.standardize(x).contiguous(memory_format=_memory_format(device))
        with _autocast(device):
            logits = self.ddp_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=s.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        correct = (logits.argmax(1) == y).sum().double()
        count = torch.full((), float(len(y)), dtype=torch.float64, device=device)
        return loss, correct, count

    def record(self, epoch: int, totals: Tensor, seconds: float) -> dict[str, float]:
        """Count the epoch in, evaluate on the test split, append its history record."""
        loss_sum, correct, count = (float(v) for v in totals.tolist())
        self.train_seconds += seconds
        self.images_seen += int(count)
        test_acc = self.evaluate()
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            "test_acc": test_acc,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "seconds": seconds,
            "images_per_s": count / seconds if seconds > 0 else float("nan"),
            # Kept with the epoch: a run resumed after it must still report its peak.
            "peak_memory_mb": peak_memory(self.device)[0],
        }
        self.history.append(record)
        return record

    def evaluate(self, transform: Callable[[Tensor], Tensor] = lambda x: x) -> float:
        return evaluate(
            self.model,
            self.test_images,
            self.test_labels,
            self.norm,
            self.device,
            transform,
            batch_size=self.s.eval_batch_size,
            ctx=self.ctx,
        )

    def state(self) -> dict[str, Any]:
        """What a checkpoint records of the training (with the RNGs: a collective)."""
        return {
            "model": self.model.state_dict(),
            "rng": gather_rng(self.ctx),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
        }


def build_args(settings: TrainSettings, data: ImageData) -> dict[str, Any]:
    """The keyword arguments of :func:`build_variant` for ``settings`` on ``data``."""
    return {
        "model": settings.model,
        "in_channels": data.channels,
        "num_classes": data.num_classes,
        "size": min(data.size),
        # resolved, so the checkpoint rebuilds the same network if the default changes
        "width": settings.width or DEFAULT_WIDTH[settings.model],
        "symmetry": settings.symmetry,
        "invariant_key": settings.invariant_key,
        "group_width": settings.group_width,
    }


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
    :func:`~symconv.compare.checkpoints.check_checkpoint`). A run whose training loss
    stops being finite is stopped and reported with ``diverged`` (the epoch) and NaN
    accuracies.
    """
    identity = dict(identity) if identity is not None else {"settings": settings.to_dict()}
    build = build_args(settings, data)
    state = None
    if store is not None:
        state = store.load(variant, run)
        if state is not None:
            check_checkpoint(state, store.path(variant, run), variant, run, seed, identity, build)
            if state.get("finished"):
                log(f"{label}: finished earlier, taken from {store.path(variant, run)}")
                return state["result"]

    torch.manual_seed(seed)
    built = build_variant(variant, **build)
    trainer = _Trainer(built, data, settings, ctx, seed)
    if state is not None:
        trainer.restore(state)
        log(f"{label}: resuming after epoch {trainer.epoch}/{settings.epochs}")
    trainer.start()
    head = {"format": COMPARE_FORMAT, "variant": variant, "run": run, "seed": seed}
    head |= {"config": identity, "build": build}

    def save(epoch: int, finished: bool, **extra: Any) -> None:
        body = trainer.state()  # every rank takes part in gathering the RNG states
        if store is not None and ctx.is_main:
            store.save(
                variant, run, {**head, "epoch": epoch, "finished": finished, **body, **extra}
            )

    epochs = _Epochs(trainer, log, label, progress, budget, job)
    diverged = epochs.run(save)
    result = _result(trainer, built, variant, run, seed, diverged)
    save(len(trainer.history), finished=True, result=result)
    ctx.barrier()
    return result


class _Epochs:
    """The epochs of one run: budget, progress bars, log lines, divergence, checkpoints."""

    def __init__(
        self,
        trainer: _Trainer,
        log: Callable[[str], None],
        label: str,
        progress: bool,
        budget: list[int] | None,
        job: JobProgress | None,
    ) -> None:
        self.trainer, self.log, self.label = trainer, log, label
        self.progress, self.budget, self.job = progress, budget, job

    def run(self, save: Callable[..., None]) -> int | None:
        """Train the remaining epochs; the epoch the loss stopped being finite, or None."""
        t, total = self.trainer, self.trainer.s.epochs
        for epoch in range(t.epoch, total):
            if self.budget is not None and self.budget[0] <= 0:
                t.ctx.barrier()
                raise RunInterrupted(f"{self.label}: stopped before epoch {epoch + 1}/{total}")
            bar = progress_bar(
                self.progress and t.ctx.is_main,
                total=t.steps,
                desc=f"{self.label} epoch {epoch + 1}",
                unit="batch",
                position=1 if self.job is not None and self.job.bar is not None else 0,
            )
            totals, seconds = t.train_epoch(epoch, bar)
            if bar is not None:
                bar.close()
            record = t.record(epoch, totals, seconds)
            finite = math.isfinite(record["train_loss"])
            if self.job is not None:
                self.job.epoch_done()
                if not finite:
                    self.job.skip(total - epoch - 1)
            tag = f"  [{self.job.describe()}]" if self.job is not None else ""
            if not finite:
                # Every later step would be NaN too, and the scores would be chance level.
                self.log(
                    f"{self.label} epoch {epoch + 1}/{total}: loss {record['train_loss']} - "
                    f"diverged; this run stops here (a lower --lr may help){tag}"
                )
                return epoch + 1
            self.log(
                f"{self.label} epoch {epoch + 1}/{total}: loss {record['train_loss']:.4f}  "
                f"train {100 * record['train_acc']:.2f}%  test {100 * record['test_acc']:.2f}%  "
                f"{record['images_per_s']:.0f} img/s  {seconds:.1f}s{tag}"
            )
            save(
                epoch + 1,
                finished=False,
                optimizer=t.optimizer.state_dict(),
                scheduler=t.scheduler.state_dict(),
            )
            if self.budget is not None:
                self.budget[0] -= 1
        return None


def _result(
    t: _Trainer, built: BuiltVariant, variant: str, run: int, seed: int, diverged: int | None
) -> dict[str, Any]:
    """The result record of a trained run: accuracy per transform, cost, history."""
    memory_mb, memory_kind = peak_memory(t.device)
    # Epochs trained by an earlier process (before an interruption) count too.
    memory_mb = max([memory_mb] + [h.get("peak_memory_mb", 0.0) for h in t.history])
    accuracy = {
        name: math.nan if diverged else t.evaluate(TRANSFORMS[name]) for name in t.s.transforms
    }
    return {
        "variant": variant,
        "run": run,
        "seed": seed,
        "params": t.params,
        "description": built.description,
        "converted": built.converted,
        "skipped": built.skipped,
        "accuracy": accuracy,
        "images_per_s": steady_images_per_s(t.history),
        "train_seconds": t.train_seconds,
        "peak_memory_mb": memory_mb,
        "memory_kind": memory_kind,
        "history": t.history,
        "diverged": diverged,
    }
