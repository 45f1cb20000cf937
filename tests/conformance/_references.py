"""Naive float64 numpy references, one per layer family, written from each layer's formula.

Each takes the spec, the parameters by torch name in torch layout (numpy) and a torch-layout
input ``(N, C, *spatial)``, and returns the torch-layout output. They read the spec's
settings, never the layers' code paths (gather indices, fused kernels, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from _numpy_conv import conv_nd


def _conv(x: np.ndarray, w: np.ndarray, conv, padding_mode: str = "zeros") -> np.ndarray:
    """``nn.ConvNd``'s cross-correlation of ``x`` ``(N, C, *sp)`` with ``w`` ``(out, in/g, *k)``."""
    nd = w.ndim - 2
    x_last = np.moveaxis(np.asarray(x, np.float64), 1, -1)
    padding = conv.padding
    if padding == "same":  # torch pads the extra element at the end, like TensorFlow
        padding = "same"
    elif padding == "valid":
        padding = [(0, 0)] * nd
    else:
        padding = [(p, p) for p in padding]
    if padding_mode != "zeros":
        mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[padding_mode]
        x_last = np.pad(x_last, [(0, 0), *padding, (0, 0)], mode=mode)
        padding = "valid"
    kernel = np.moveaxis(np.asarray(w, np.float64), (0, 1), (-1, -2))
    out = conv_nd(x_last, kernel, conv.stride, padding, conv.dilation, conv.groups)
    return np.moveaxis(out, -1, 1)


def symmetric(spec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Each output channel is its free filter reflected along the axes its member flips."""
    plan, conv = spec.plan, spec.conv
    free = params["weight"]
    full = np.stack(
        [
            np.flip(free[plan.free_index[c]], axis=tuple(1 + np.flatnonzero(plan.flips[c])))
            for c in range(plan.out_channels)
        ]
    )
    out = _conv(x, full, conv, conv.padding_mode)
    if "bias" in params:
        bias = params["bias"][plan.bias_index]
        out = out + bias.reshape(1, -1, *([1] * conv.ndim))
    return out


def _odd_kernel(taps: np.ndarray, k: int) -> np.ndarray:
    """Free taps ``(out, in, n)`` -> odd kernel ``(out, in, k, k)``, tap by tap."""
    kernel = np.zeros((*taps.shape[:2], k, k))
    for t in range(taps.shape[2]):
        r, c = divmod(t, k)
        kernel[:, :, r, c] = taps[:, :, t]
        kernel[:, :, k - 1 - r, k - 1 - c] = -taps[:, :, t]
    return kernel


def twist(spec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """``conv(x, W) + (X - cx) conv(x, Wx) + (Y - cy) conv(x, Wy) + b``, with
    ``X = 2 j / W_out`` and ``Y = 2 i / H_out``."""
    k = spec.kernel_size
    conv = SimpleNamespace(
        padding=(k // 2, k // 2), stride=spec.stride, dilation=(1, 1), groups=spec.groups
    )
    kernels = (
        params["weight"],
        _odd_kernel(params["twist_x"], k),
        _odd_kernel(params["twist_y"], k),
    )
    a, b, c = (_conv(x, w, conv, spec.padding_mode) for w in kernels)
    h, w = a.shape[-2:]
    X = (2 * np.arange(w) / w)[None, None, None, :]
    Y = (2 * np.arange(h) / h)[None, None, :, None]
    cx = params["center_x"][None, :, None, None]
    cy = params["center_y"][None, :, None, None]
    out = a + (X - cx) * b + (Y - cy) * c
    if "bias" in params:
        out = out + params["bias"][None, :, None, None]
    return out


def global_conv(spec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """``y_i = x_i C + reduce_{j != i} x_j S + b`` (sum, or mean over the n - 1 others)."""
    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    out = np.zeros((x.shape[0], spec.out_channels, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        surround = x[:, :, others].sum(-1)
        if spec.reduction == "mean" and others:
            surround = surround / len(others)
        y = x[:, :, i] @ params["center"] + surround @ params["surround"]
        if "bias" in params:
            y = y + params["bias"]
        out[:, :, i] = y
    return out


def topk(spec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The ``k`` largest values along the last axis, largest first."""
    return -np.sort(-np.asarray(x, np.float64), axis=-1)[..., : spec.k]


def orbit_pool(spec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Channel ``f``: the max (or mean) over the channels made from free filter ``f``."""
    x = np.asarray(x, np.float64)
    reduce = np.max if spec.mode == "max" else np.mean
    free_index = spec.plan.free_index
    pooled = [reduce(x[:, free_index == f], axis=1) for f in range(spec.plan.n_free)]
    return np.stack(pooled, axis=1)


def group_conv(spec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """A plain convolution with the kernel of turned copies (``_group_reference``, torch ops
    only) and one bias per output field."""
    import torch

    from _group_reference import full_kernel

    full = full_kernel(spec.group.key, torch.from_numpy(params["weight"])).numpy()
    out = _conv(x, full, spec.conv, spec.conv.padding_mode)
    if "bias" in params:
        bias = np.repeat(params["bias"], spec.group.order)
        out = out + bias.reshape(1, -1, *([1] * spec.conv.ndim))
    return out


def group_pool(spec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Each field's members pooled: all of them (``to`` None), or for subgroup member
    ``h`` the members ``h c`` over the first member ``c`` of each right coset ``H c``,
    with the multiplication table found by composing torch ops (``_group_reference``)."""
    from _group_reference import MEMBERS, table

    words, t = MEMBERS[spec.group.key], table(spec.group.key)
    n = len(words)
    fields = np.asarray(x, np.float64).reshape(x.shape[0], -1, n, *x.shape[2:])
    if spec.to is None:
        rows = [list(range(n))]
    else:
        sub = [words.index(w) for w in MEMBERS[spec.to]]
        reps: list[int] = []
        covered: set[int] = set()
        for c in range(n):
            if c not in covered:
                reps.append(c)
                covered |= {t[h][c] for h in sub}
        rows = [[t[h][c] for c in reps] for h in sub]
    reduce = np.max if spec.mode == "max" else np.mean
    pooled = np.stack([reduce(fields[:, :, row], axis=2) for row in rows], axis=2)
    return pooled.reshape(x.shape[0], -1, *x.shape[2:])


def group_batch_norm(spec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Training mode: field ``f`` (channels ``f |G|`` to ``f |G| + |G| - 1``) normalized by
    the mean and biased variance of all its values (batch, members, positions), then
    scaled by ``weight[f]`` and shifted by ``bias[f]``."""
    x = np.asarray(x, np.float64)
    n = spec.group.order
    out = np.empty_like(x)
    for f in range(x.shape[1] // n):
        values = x[:, f * n : (f + 1) * n]
        normed = (values - values.mean()) / np.sqrt(values.var() + spec.eps)
        if "weight" in params:
            normed = normed * params["weight"][f] + params["bias"][f]
        out[:, f * n : (f + 1) * n] = normed
    return out


#: ``symconv.registry.Family.name`` -> reference.
REFERENCES: dict[str, Callable[..., np.ndarray]] = {
    "symmetric1d": symmetric,
    "symmetric2d": symmetric,
    "symmetric3d": symmetric,
    "twist": twist,
    "global_conv": global_conv,
    "topk": topk,
    "orbit_pool": orbit_pool,
    "group_pool": group_pool,
    "group_conv1d": group_conv,
    "group_conv2d": group_conv,
    "group_conv3d": group_conv,
    "group_batch_norm1d": group_batch_norm,
    "group_batch_norm2d": group_batch_norm,
    "group_batch_norm3d": group_batch_norm,
}
