"""Odd kernels from their free taps, the coordinate grids, and the small tensor helpers
ConvTwist's paths share.

An odd ``k x k`` kernel (``K(-d) = -K(d)``, center 0) is stored by its ``(k * k - 1) / 2``
free taps, those before the center in row-major order: row-major taps ``j`` and
``k * k - 1 - j`` sit at ``d`` and ``-d``.
"""

import functools
import warnings

import torch
from torch import Tensor

from symconv.nn._cache import tracing

__all__ = [
    "autocast_enabled",
    "constant",
    "exporting",
    "make_grid",
    "odd_expansion",
    "odd_expansion_rows",
    "odd_kernel",
]


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``False`` for a type it does not know)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. 'meta')
        return False


def exporting() -> bool:
    """Whether a graph is being recorded to be kept (``torch.export``, ``torch.jit.trace``
    and the ONNX exporters, which run one of them), as opposed to compiled and run by
    ``torch.compile``."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def constant(values: list, like: Tensor) -> Tensor:
    """A tensor of Python numbers on ``like``'s device, in float32 or wider: a constant (an
    initializer in ONNX) in recorded graphs rather than the ops that would compute it."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    if not torch.jit.is_tracing():
        return torch.tensor(values, dtype=dtype, device=like.device)
    with warnings.catch_warnings():
        # torch.jit.trace warns that torch.tensor results are constants: that is the point.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.tensor(values, dtype=dtype, device=like.device)


@functools.lru_cache(maxsize=32)
def odd_expansion_rows(k: int) -> list[list[float]]:
    """The ``((k*k-1)/2, k*k)`` tap -> kernel matrix as nested lists (see
    :func:`odd_expansion`)."""
    m = (k * k - 1) // 2
    rows = [[0.0] * (k * k) for _ in range(m)]
    for j in range(m):
        rows[j][j], rows[j][k * k - 1 - j] = 1.0, -1.0
    return rows


@functools.lru_cache(maxsize=32)
def _odd_expansion_cached(k: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(odd_expansion_rows(k), dtype=dtype, device=device)


def odd_expansion(k: int, like: Tensor) -> Tensor:
    """The ``((k*k-1)/2, k*k)`` matrix taking free taps to a flattened odd kernel: ``+1`` at
    tap ``j``, ``-1`` at its mirror ``k*k-1-j`` (cached per size, device and dtype)."""
    if tracing():
        return _odd_expansion_cached.__wrapped__(k, like.device, like.dtype)
    return _odd_expansion_cached(k, like.device, like.dtype)


def odd_kernel(free: Tensor, kernel_size: int) -> Tensor:
    """Free taps ``(..., (k*k-1)/2)`` -> odd kernels ``(..., k, k)`` (e.g. ``(out, in/g, k, k)``).

    Row-major index ``i`` and ``k*k - 1 - i`` are the taps at ``d`` and ``-d``.
    """
    center = free.new_zeros(*free.shape[:-1], 1)
    flat = torch.cat([free, center, -free.flip(-1)], dim=-1)
    return flat.unflatten(-1, (kernel_size, kernel_size))


def make_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``X`` of shape ``(w,)`` and ``Y`` of shape ``(h, 1)``: ``2 j / w`` and ``2 i / h``,
    computed in at least float32 and rounded once to ``dtype``."""
    exact = torch.promote_types(dtype, torch.float32)
    gx = (torch.arange(w, device=device, dtype=exact) * 2 / w).to(dtype)
    gy = (torch.arange(h, device=device, dtype=exact) * 2 / h).to(dtype)
    return gx, gy.unsqueeze(1)
