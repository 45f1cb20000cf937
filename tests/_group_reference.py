"""Naive references for the group tests, written from the definitions with torch ops only
(no symconv code): members as words of torch.rot90/flip, their multiplication table found
by composing those ops, group convolution kernels built by scattering turned copies."""

from __future__ import annotations

import functools

import torch

OPS = {
    "h": lambda x: x.flip(-1),
    "v": lambda x: x.flip(-2),
    "z": lambda x: x.flip(-3),
    "r": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
}

# The documented member orders, as words read right to left (rightmost acts first).
MEMBERS = {
    "h": ["", "h"],
    "v": ["", "v"],
    "hv": ["", "h", "v", "hv"],
    "z": ["", "z"],
    "hz": ["", "h", "z", "hz"],
    "vz": ["", "v", "z", "vz"],
    "hvz": ["", "h", "v", "hv", "z", "hz", "vz", "hvz"],
    "r": ["", "r", "rr", "rrr"],
    "hr": ["", "r", "rr", "rrr", "h", "rh", "rrh", "rrrh"],
}
NDIM = {"h": 2, "v": 2, "hv": 2, "z": 3, "hz": 3, "vz": 3, "hvz": 3, "r": 2, "hr": 2}


def apply(word: str, x: torch.Tensor) -> torch.Tensor:
    """The word acting on the trailing spatial dims of ``x``."""
    for ch in reversed(word):
        x = OPS[ch](x)
    return x


@functools.cache
def table(key: str) -> tuple[tuple[int, ...], ...]:
    """``table[a][b]`` = index of ``a b``, found by acting on a random probe."""
    probe = torch.randn(*(5,) * NDIM[key], generator=torch.Generator().manual_seed(0))
    images = [apply(w, probe) for w in MEMBERS[key]]

    def find(t: torch.Tensor) -> int:
        return next(i for i, im in enumerate(images) if torch.equal(im, t))

    return tuple(tuple(find(apply(a, images[b])) for b in range(len(images))) for a in MEMBERS[key])


def act_group(key: str, g: int, x: torch.Tensor) -> torch.Tensor:
    """Member ``g`` on a group feature map ``(N, F * |G|, *spatial)``: each field's member
    ``k`` goes to ``g k`` and is transformed spatially."""
    n = len(MEMBERS[key])
    fields = apply(MEMBERS[key][g], x).unflatten(1, (-1, n))
    out = torch.empty_like(fields)
    for k in range(n):
        out[:, :, table(key)[g][k]] = fields[:, :, k]
    return out.flatten(1, 2)


def full_kernel(key: str, free: torch.Tensor) -> torch.Tensor:
    """Group conv kernel: output member ``g`` holds ``g(free)`` with the free kernel's input
    member ``k`` moved to ``g k``. ``free``: ``(O, F * |G|, *k)`` -> ``(O * |G|, F * |G|, *k)``."""
    n = len(MEMBERS[key])
    o, cin = free.shape[:2]
    full = torch.empty(o, n, cin // n, n, *free.shape[2:], dtype=free.dtype)
    by_member = free.unflatten(1, (-1, n))
    for g, word in enumerate(MEMBERS[key]):
        for k in range(n):
            full[:, g, :, table(key)[g][k]] = apply(word, by_member[:, :, k])
    return full.reshape(o * n, cin, *free.shape[2:])
