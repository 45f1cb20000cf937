"""Group members on numpy arrays for the Keras group tests, written from the definitions
(``np.rot90``/``np.flip`` words and a table found by composing them), not from symconv."""

from __future__ import annotations

import functools

import numpy as np

from _group_reference import MEMBERS  # the documented member orders, as words

__all__ = ["MEMBERS", "act", "apply", "full_kernel", "table"]


def apply(word: str, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The word acting on the spatial ``axes`` of ``x`` (the last two: height, width)."""
    for ch in reversed(word):
        if ch == "r":
            x = np.rot90(x, 1, axes=(axes[-2], axes[-1]))
        else:
            x = np.flip(x, axes[{"h": -1, "v": -2, "z": -3}[ch]])
    return x


@functools.cache
def table(key: str) -> tuple[tuple[int, ...], ...]:
    """``table[a][b]`` = index of ``a b``, found by acting on a random probe."""
    ndim = 3 if "z" in key else 2
    probe = np.random.default_rng(0).standard_normal((5,) * ndim)
    axes = tuple(range(ndim))
    images = [apply(w, probe, axes) for w in MEMBERS[key]]

    def find(t: np.ndarray) -> int:
        return next(i for i, im in enumerate(images) if np.array_equal(im, t))

    return tuple(
        tuple(find(apply(a, images[b], axes)) for b in range(len(images))) for a in MEMBERS[key]
    )


def full_kernel(key: str, free: np.ndarray) -> np.ndarray:
    """A Keras group conv kernel from its free kernel ``(*k, F * |G|, O)``: output channel
    ``o * |G| + g`` holds ``g(free[..., o])`` with input member ``k`` moved to ``g k``.
    Returns ``(*k, F * |G|, O * |G|)``."""
    n = len(MEMBERS[key])
    nd = free.ndim - 2
    cin, fields_out = free.shape[-2:]
    full = np.empty((*free.shape[:-1], fields_out * n), dtype=free.dtype)
    for o in range(fields_out):
        for g, word in enumerate(MEMBERS[key]):
            turned = apply(word, free[..., o], tuple(range(nd)))
            for f in range(cin // n):
                for k in range(n):
                    full[..., f * n + table(key)[g][k], o * n + g] = turned[..., f * n + k]
    return full


def act(x: np.ndarray, key: str, g: int, data_format: str, layout: str = "group") -> np.ndarray:
    """Member ``g`` on a Keras feature map: turned/reflected spatially and, for
    ``layout='group'``, each field's member ``k`` moved to ``g k``."""
    nd = x.ndim - 2
    first = data_format == "channels_first"
    spatial = tuple(range(2, 2 + nd)) if first else tuple(range(1, 1 + nd))
    y = apply(MEMBERS[key][g], x, spatial)
    if layout == "image":
        return np.ascontiguousarray(y)
    channel = 1 if first else -1
    n = len(MEMBERS[key])
    out = np.empty_like(y)
    for c in range(x.shape[channel]):
        f, k = divmod(c, n)
        target = f * n + table(key)[g][k]
        index = [slice(None)] * x.ndim
        index[channel] = target
        source = [slice(None)] * x.ndim
        source[channel] = c
        out[tuple(index)] = y[tuple(source)]
    return out
