"""The optimizer of ``symconv compare`` runs: AdamW, a one-cycle schedule, fixed batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from symconv.compare.config import TrainSettings

__all__ = ["batches", "make_optimizer", "one_cycle"]


def batches(n: int, batch: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of ``batch`` items, the ragged last one dropped (all of it
    when ``n <= batch``)."""
    if n <= batch:
        yield slice(0, n)
        return
    for start in range(0, n - batch + 1, batch):
        yield slice(start, start + batch)


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """AdamW at ``s.lr`` with weight decay ``s.weight_decay`` on the weights of more than one
    dimension only: biases, norms and the ConvTwist centers (all 1-D) are not decayed."""
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
    """The one-cycle factor on the peak learning rate at each optimizer step.

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
