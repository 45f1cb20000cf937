"""A naive numpy convolution (float64, channels_last), the reference for the Keras tests."""

from __future__ import annotations

import numpy as np


def same_pads(sizes, kernel, strides, dilation):
    """TensorFlow's 'same' padding: ``(before, after)`` per spatial axis, extra after."""
    pads = []
    for n, k, s, d in zip(sizes, kernel, strides, dilation, strict=True):
        out = -(-n // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def conv_nd(x, w, strides=None, padding="valid", dilation=None, groups=1):
    """Cross-correlation of ``x`` ``(N, *spatial, Cin)`` with ``w`` ``(*k, Cin/g, Cout)``.

    ``padding`` is ``'valid'``, ``'same'`` or a list of ``(before, after)`` zero pads.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    kernel = w.shape[:nd]
    strides = strides or (1,) * nd
    dilation = dilation or (1,) * nd
    if padding == "same":
        padding = same_pads(x.shape[1:-1], kernel, strides, dilation)
    if padding != "valid":
        x = np.pad(x, [(0, 0), *padding, (0, 0)])
    out_sp = [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(x.shape[1:-1], kernel, strides, dilation, strict=True)
    ]
    cin_g, cout = w.shape[-2], w.shape[-1]
    cout_g = cout // groups
    out = np.zeros((x.shape[0], *out_sp, cout))
    for off in np.ndindex(*kernel):
        sl = tuple(
            slice(o * d, o * d + (m - 1) * s + 1, s)
            for o, d, m, s in zip(off, dilation, out_sp, strides, strict=True)
        )
        patch = x[(slice(None), *sl)]
        for g in range(groups):
            ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
            out[..., co] += patch[..., ci] @ w[off][:, co]
    return out
