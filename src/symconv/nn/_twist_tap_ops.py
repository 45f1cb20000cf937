"""The building blocks of ConvTwist's ``'taps'`` path (:mod:`symconv.nn._twist_taps`): the
tap geometry, the differentiable reference of the twist terms, the centered grids, the
centers' gradients and the GEMMs of a chunk's backward.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MIN_GEMM_ROWS",
    "Geometry",
    "as_rows",
    "backward_gemms",
    "center_grads",
    "centered_grids",
    "gemm_rows",
    "sum_chunks",
    "tap_pairs",
    "tap_windows",
    "twist_terms_reference",
    "windows",
]

# The GEMM runs as a 1x1 convolution over (rows, channels, 1, columns) views of a chunk's
# channels-last pixel rows, with at least this many rows: single-threaded PyTorch sends 1x1
# convolutions of fewer images to a slower BLAS path instead of oneDNN (set with
# benchmarks/bench_twist.py; figures in benchmarks/README.md).
MIN_GEMM_ROWS = 16


class Geometry(NamedTuple):
    """A ConvTwist layer's geometry: odd square kernel size, stride, groups, zero padding."""

    k: int
    stride: tuple[int, int]
    groups: int
    pad: int


def windows(r: int, s: int, stride: tuple[int, int], ho: int, wo: int) -> tuple[slice, slice]:
    """Rows and columns of a padded input that tap ``(r, s)`` of a kernel reads."""
    return (
        slice(r, r + stride[0] * (ho - 1) + 1, stride[0]),
        slice(s, s + stride[1] * (wo - 1) + 1, stride[1]),
    )


def tap_pairs(k: int) -> list[tuple[int, int, int, int]]:
    """``(r, s, r', s')`` for every free tap: the offsets ``d`` and ``-d`` as kernel indices."""
    return [(*divmod(j, k), *divmod(k * k - 1 - j, k)) for j in range((k * k - 1) // 2)]


def twist_terms_reference(
    x: Tensor, w1: Tensor, cx: Tensor, cy: Tensor, gx: Tensor, gy: Tensor, geo: Geometry
) -> Tensor:
    """``(X - cx) * conv(x, Wx) + (Y - cy) * conv(x, Wy)`` in plain differentiable ops (for
    compilers, exporters and double backward). Shapes as in
    :func:`symconv.nn._twist_taps.odd_tap_twist`."""
    k, stride, groups, pad = geo
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    hp, wp = xp.shape[-2:]
    ho, wo = (hp - k) // stride[0] + 1, (wp - k) // stride[1] + 1
    xv = xp.unflatten(1, (groups, xp.shape[1] // groups))
    taps = [
        xv[(..., *windows(r, s, stride, ho, wo))] - xv[(..., *windows(r2, s2, stride, ho, wo))]
        for r, s, r2, s2 in tap_pairs(k)
    ]
    d = torch.stack(taps, dim=2).flatten(1, 3)  # channels (group, tap, channel in group)
    bc = F.conv2d(d, w1, None, 1, 0, 1, groups)
    n, co = bc.shape[0], w1.shape[0] // 2
    b, c = bc.view(n, groups, 2, co // groups, ho, wo).unbind(2)
    xc, yc = centered_grids(gx, gy, cx, cy, groups, b.dtype)
    # channels first: (groups, out / groups, 1, W_out) and (groups, out / groups, H_out, 1)
    xc, yc = xc.permute(1, 2, 0).unsqueeze(2), yc.permute(2, 3, 0, 1)
    return (b * xc + c * yc).reshape(n, co, ho, wo)


def centered_grids(
    gx: Tensor, gy: Tensor, cx: Tensor, cy: Tensor, groups: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``X - cx`` as ``(W_out, groups, out / groups)`` and ``Y - cy`` as ``(H_out, 1, groups,
    out / groups)``, for channels-last rows: computed in the grids' precision, rounded once."""
    co = cx.shape[0]
    xc = (gx.view(-1, 1) - cx.to(gx.dtype)).to(dtype)
    yc = (gy.view(-1, 1) - cy.to(gy.dtype)).to(dtype)
    return xc.view(-1, groups, co // groups), yc.view(-1, 1, groups, co // groups)


def center_grads(g0: Tensor, w1: Tensor, k: int, groups: int) -> Tensor:
    """``(dL/dcx, dL/dcy)`` as ``(2, out)`` from the main kernel's gradient ``g0 = dL/dW0``.

    The centers weigh ``-cx * conv(x, Wx)``, so ``dL/dcx = -sum_p g(p) conv(x, Wx)(p)``, and
    ``g0[o, c, d] = sum_p g_o(p) x_c(p + d)`` holds every such sum: ``dL/dcx = -<g0, Wx>``
    per output channel, over the free taps ``<g0(d) - g0(-d), Wx(d)>``. No pass over the
    batch, and the centers need not be folded into a copy of the main kernel."""
    co, cig = g0.shape[:2]
    m = (k * k - 1) // 2
    # g0 as (out, k*k, in / g) (a view of a channels-last g0), so <g0(d) - g0(-d), W(d)> is
    # one dot product per row of w1's (tap, in / g) taps; written contiguous, because an
    # einsum over the strided layouts is slower for wide layers.
    per_offset = g0.permute(0, 2, 3, 1).reshape(co, k * k, cig)
    odd = g0.new_empty(co, m, cig)
    torch.sub(per_offset[:, :m], per_offset[:, m + 1 :].flip(1), out=odd)
    taps = w1.view(groups, 2, co // groups, m * cig)
    dots = torch.linalg.vecdot(odd.view(groups, 1, co // groups, m * cig), taps)
    return -dots.transpose(0, 1).reshape(2, co)


@functools.lru_cache(maxsize=256)
def gemm_rows(pixels: int) -> int:
    """The smallest divisor of ``pixels`` from ``MIN_GEMM_ROWS`` to 4096, else ``pixels``
    (one pixel per row is as good a GEMM; the bound keeps the search short)."""
    return next((r for r in range(MIN_GEMM_ROWS, min(pixels, 4097)) if pixels % r == 0), pixels)


def as_rows(t: Tensor) -> Tensor:
    """A contiguous ``(..., K)`` block of pixel rows as a channels-last ``(R, K, 1, P / R)``."""
    k = t.shape[-1]
    pixels = t.numel() // k if k else 0
    r = gemm_rows(pixels) if pixels else 1
    return t.reshape(r, 1, pixels // r, k).permute(0, 3, 1, 2)


def tap_windows(t: Tensor, geo: Geometry, ho: int, wo: int) -> list[tuple[Tensor, Tensor]]:
    """For every free tap, the windows at ``+d`` and ``-d`` of a channels-last padded
    ``(n, hp, wp, C)`` tensor, as ``(n, ho, wo, groups, C / groups)`` views (built once per
    buffer: slicing costs as much as a small chunk's arithmetic)."""
    k, stride, groups, _ = geo
    tv = t.unflatten(3, (groups, -1))
    views = []
    for r, s, r2, s2 in tap_pairs(k):
        rows, cols = windows(r, s, stride, ho, wo)
        rows2, cols2 = windows(r2, s2, stride, ho, wo)
        views.append((tv[:, rows, cols], tv[:, rows2, cols2]))
    return views


def sum_chunks(total: Tensor | None, part: Tensor) -> Tensor:
    """``total + part`` for the chunks' weight gradients, in place from the second chunk on
    and then in at least float32: reduced-precision partial sums would round at every chunk,
    where a convolution's weight gradient rounds once."""
    if total is None:
        return part  # a GEMM's fresh output
    if total.element_size() < 4:
        total = total.float()
    return total.add_(part)


def backward_gemms(
    g_rows: Tensor, d: Tensor, w1: Tensor, groups: int, need_d: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """The GEMMs of a chunk's backward: ``g_rows`` ``(nb, ho, wo, groups, 2, out / groups)``
    and ``d`` ``(nb, ho, wo, groups, m, in / groups)`` -> the gradients of ``d`` (a view of
    that shape, each tap's block contiguous where that is cheaper to scatter) and ``w1``."""
    nb, ho, wo, _, m, cg = d.shape
    if groups == 1 and d.element_size() < 4 and d.device.type == "cpu":
        # Reduced precision: matmuls (oneDNN) beat the 1x1 convolution's backward, and one
        # product per tap writes that tap's gradient as one contiguous block, where strided
        # reduced-precision adds reading one tap out of the interleaved layout are slow.
        g2 = g_rows.view(nb * ho * wo, -1)
        gw = torch.mm(g2.t(), d.view(g2.shape[0], -1)).view_as(w1) if need_w else None
        gd = None
        if need_d:
            per_tap = w1.view(w1.shape[0], m, cg).transpose(0, 1).contiguous()  # (m, 2 out, in)
            gd = d.new_empty(m, g2.shape[0], cg)
            for j in range(m):
                torch.mm(g2, per_tap[j], out=gd[j])
            gd = gd.view(m, nb, ho, wo, 1, cg).permute(1, 2, 3, 4, 0, 5)
        return gd, gw
    gd, gw, _ = torch.ops.aten.convolution_backward(
        as_rows(g_rows.flatten(3)),
        as_rows(d.flatten(3)),
        w1,
        None,
        [1, 1],
        [0, 0],
        [1, 1],
        False,
        [0, 0],
        groups,
        [need_d, need_w, False],
    )
    if gd is not None:
        # A view for the channels-last gradient oneDNN returns; cuDNN may return another
        # layout (with one input channel, for one), which then costs one copy.
        gd = gd.permute(0, 2, 3, 1).reshape(d.shape)
    return gd, gw
