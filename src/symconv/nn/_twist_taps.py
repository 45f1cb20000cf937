"""ConvTwist's ``'taps'`` path: the main convolution plus both twist terms, the odd kernels
taken through their free taps.

For an odd kernel ``K`` (``K(-d) = -K(d)``, center 0) whose free taps are the ``m =
(k*k-1)/2`` offsets ``d_j`` before the center (row-major),

    conv(x, K)(p) = sum_j K(d_j) * (x(p + d_j) - x(p - d_j)),

so both twist terms ``(X - cx) * conv(x, Wx) + (Y - cy) * conv(x, Wy)`` are one 1x1
convolution (a GEMM of ``m * in`` by ``2 * out`` per pixel) of the ``m`` tap differences
and a grid-weighted tail: ``2 m / k^2`` of a convolution's multiply-adds instead of 2 (17/9
in all with the main 3x3 convolution, not 3).

:class:`_OddTapTwist` runs them in chunks of images sized to stay in the CPU caches: per
chunk the padded input is copied into a channels-last scratch buffer, its differences
formed by shifted slices, weighed by one GEMM and the grids' products added into the main
convolution's output, so nothing of ``m`` times the input's size ever goes to memory. The
backward recomputes the differences per chunk instead of saving them: a step keeps only
the layer's input, as a plain convolution does. Off the CPU the whole batch is one chunk.
The main convolution uses ``W`` itself (no center-folded copy); the centers' gradients
come from ``W``'s (:func:`center_grads`).

The input gradient of the differences is ``sum_j G_j(p - d_j) - G_j(p + d_j)``, with ``G_j``
tap ``j``'s share of the GEMM's input gradient. As the GEMM acts pixel by pixel, those
differences can equally be taken *before* it, on the grid-weighted output gradient ``g'``
(``2 * out`` channels): ``E_j(p) = g'(p - d_j) - g'(p + d_j)``. Then one GEMM ``E W`` *is*
the twist's input gradient (no scatter of ``m`` tap gradients) and the weight's gradient is
``E^T x`` (no input differences to recompute). :func:`_output_side_backward` does that at
stride 1 without groups in reduced precision on CPU, where benchmarks/bench_twist.py finds
it faster.

The building blocks (tap geometry, the differentiable reference, the centers' gradients, the
backward's GEMMs) are in :mod:`symconv.nn._twist_tap_ops`; this module holds the chunking and
its tuning constants.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from symconv.nn._cache import tracing
from symconv.nn._twist_tap_ops import (
    Geometry,
    as_rows,
    backward_gemms,
    center_grads,
    centered_grids,
    sum_chunks,
    tap_windows,
    twist_terms_reference,
)

__all__ = ["Geometry", "odd_tap_twist"]

# Tuning constants of the CPU path. Each was chosen with benchmarks/bench_twist.py (one
# thread, float32 and bfloat16 channels_last, the ResNet shapes); the figures are in
# benchmarks/README.md ("How the taps path works").
#
# A chunk holds about this many bytes of tap differences, so that a chunk's scratch buffers
# (padded input, differences, GEMM output) stay in the last-level cache of one core's share.
_CHUNK_BYTES = 2 << 20
# ... and at least this many times the bytes of the GEMM's weight, so that the weight is
# reused across enough pixel rows to pay for reading it (wide layers on small maps).
_WEIGHT_REUSE = 4
# The output-side backward (see the module docstring) is used for element sizes up to this
# (bfloat16/float16: faster there; in float32 its GEMMs become slow 1x1 convolution backward
# passes). Its chunks hold about _GRAD_CHUNK_BYTES of output-gradient differences ``E``, and
# it is used only where that is at least _WEIGHT_REUSE times the GEMM weight's bytes: for
# wide layers on small maps, small chunks add a weight-sized gradient per chunk and larger
# ones (``E`` is twice the input's differences) leave the cache.
_OUTPUT_SIDE_MAX_ITEMSIZE = 2
_GRAD_CHUNK_BYTES = 4 << 20


class _OddTapTwist(torch.autograd.Function):
    """``conv(x, W0) + bias + (X - cx) * conv(x, Wx) + (Y - cy) * conv(x, Wy)`` (see
    :func:`odd_tap_twist`).

    The main convolution is part of the function so the tail writes into its output and the
    backward adds the twist terms' input gradient into the convolution's, in cache, chunk
    by chunk (no second input-sized gradient to allocate and sum); the centers' gradients
    come from the main kernel's (:func:`center_grads`)."""

    @staticmethod
    def forward(
        ctx: object,
        x: Tensor,
        w0: Tensor,
        bias: Tensor | None,
        w1: Tensor,
        cx: Tensor,
        cy: Tensor,
        gx: Tensor,
        gy: Tensor,
        geo: Geometry,
    ) -> Tensor:
        ctx.save_for_backward(x, w0, bias, w1, cx, cy, gx, gy)
        ctx.geometry = geo
        k, stride, groups, pad = geo
        out = F.conv2d(x, w0, bias, stride, pad, 1, groups)
        if out.numel() == 0:
            return out
        n, co, ho, wo = out.shape
        xc, yc = centered_grids(gx, gy, cx, cy, groups, out.dtype)
        cl = out.is_contiguous(memory_format=torch.channels_last)
        step = _chunk_size(x, w1, k, ho, wo)
        tail_buf = None if cl else out.new_empty(step, ho, wo, groups, co // groups)
        for i, xp, d in _chunks(x, geo, ho, wo, step):
            nb = xp.shape[0]
            bc = F.conv2d(as_rows(d.flatten(3)), w1, None, 1, 0, 1, groups)
            b, c = bc.permute(0, 2, 3, 1).reshape(nb, ho, wo, groups, 2, -1).unbind(4)
            out_i = out[i : i + nb]
            if cl:  # channels-last: the tail runs on contiguous channel rows
                out_v = out_i.permute(0, 2, 3, 1).view(nb, ho, wo, groups, co // groups)
                out_v.addcmul_(b, xc).addcmul_(c, yc)
            else:  # the twist terms channels-last, then one transposing add
                tail = tail_buf[:nb]
                torch.mul(b, xc, out=tail)
                tail.addcmul_(c, yc)
                out_i.add_(tail.view(nb, ho, wo, co).permute(0, 3, 1, 2))
        return out

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w0, bias, w1, cx, cy, gx, gy = ctx.saved_tensors
        geo = ctx.geometry
        k, stride, groups, pad = geo
        needs = ctx.needs_input_grad[:6]
        need_x, need_w0, need_bias, need_w, need_cx, need_cy = needs
        none = (None,) * 3
        if torch.is_grad_enabled():
            # Double backward: the same vector-Jacobian product from differentiable ops.
            with torch.enable_grad():
                out = F.conv2d(x, w0, bias, stride, pad, 1, groups)
                out = out + twist_terms_reference(x, w1, cx, cy, gx, gy, geo)
            inputs = (x, w0, bias, w1, cx, cy)
            wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
            grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
            return (*(next(grads) if need else None for need in needs), *none)
        grad_x, grad_w0, grad_bias = torch.ops.aten.convolution_backward(
            grad,
            x,
            w0,
            None if bias is None else [bias.shape[0]],
            list(stride),
            [pad, pad],
            [1, 1],
            False,
            [0, 0],
            groups,
            [need_x, need_w0 or need_cx or need_cy, need_bias],
        )
        grad_cx = grad_cy = None
        if need_cx or need_cy:
            grad_cx, grad_cy = center_grads(grad_w0, w1, k, groups).to(cx.dtype)
        grad_w = None
        if grad.numel() and (need_x or need_w):
            xc, yc = centered_grids(gx, gy, cx, cy, groups, grad.dtype)
            grad_w = _twist_backward(grad, x, w1, xc, yc, geo, grad_x, need_w)
        elif need_w:
            grad_w = torch.zeros_like(w1)
        return (
            grad_x,
            grad_w0 if need_w0 else None,
            grad_bias,
            grad_w,
            grad_cx if need_cx else None,
            grad_cy if need_cy else None,
            *none,
        )


def _twist_backward(
    grad: Tensor,
    x: Tensor,
    w1: Tensor,
    xc: Tensor,
    yc: Tensor,
    geo: Geometry,
    grad_x: Tensor | None,
    need_w: bool,
) -> Tensor | None:
    """The twist terms' backward, chunk by chunk: adds their input gradient into ``grad_x``
    (``None`` when not needed) and returns their GEMM weight's gradient (if ``need_w``).
    ``xc``, ``yc``: the centered grids of :func:`centered_grids`.

    The differences are taken on the output gradient (:func:`_output_side_backward`) in
    reduced precision on CPU at stride 1 without groups while the GEMM weight is small
    next to a chunk, else on the input, recomputed per chunk, and the GEMM's input gradient
    scattered back through them (the transpose of the forward)."""
    if (
        geo.stride == (1, 1)
        and geo.groups == 1
        and x.element_size() <= _OUTPUT_SIDE_MAX_ITEMSIZE
        and x.device.type == "cpu"
        and _weight_reuse_bytes(w1) <= _GRAD_CHUNK_BYTES
    ):
        return _output_side_backward(grad, x, w1, xc, yc, geo, grad_x, need_w)
    k, _, groups, pad = geo
    n, co, ho, wo = grad.shape
    h, w = x.shape[-2:]
    step = _chunk_size(x, w1, k, ho, wo)
    g_buf = grad.new_empty(step, ho, wo, groups, 2, co // groups)
    gxp_buf = None if grad_x is None else x.new_empty(step, h + 2 * pad, w + 2 * pad, x.shape[1])
    gv = grad.permute(0, 2, 3, 1).unflatten(3, (groups, -1))
    gx_views = None
    gw_sum = None
    for i, xp, d in _chunks(x, geo, ho, wo, step):
        nb = xp.shape[0]
        g_rows = g_buf[:nb]
        torch.mul(gv[i : i + nb], xc, out=g_rows[..., 0, :])
        torch.mul(gv[i : i + nb], yc, out=g_rows[..., 1, :])
        gd, gw = backward_gemms(g_rows, d, w1, groups, grad_x is not None, need_w)
        if need_w:
            gw_sum = sum_chunks(gw_sum, gw)
        if grad_x is None:
            continue
        # The transpose of the differences: each tap's gradient added at +d, taken at -d.
        gxp = gxp_buf[:nb].zero_()
        if gx_views is None or nb < step:
            gx_views = tap_windows(gxp, geo, ho, wo)
        for (plus, minus), g_j in zip(gx_views, gd.unbind(4), strict=True):
            plus += g_j
            minus -= g_j
        grad_x[i : i + nb] += gxp[:, pad : pad + h, pad : pad + w].permute(0, 3, 1, 2)
    return None if gw_sum is None else gw_sum.to(w1.dtype)


def _output_side_backward(
    grad: Tensor,
    x: Tensor,
    w1: Tensor,
    xc: Tensor,
    yc: Tensor,
    geo: Geometry,
    grad_x: Tensor | None,
    need_w: bool,
) -> Tensor | None:
    """:func:`_twist_backward` at stride 1 without groups, from the differences ``E`` of the
    grid-weighted output gradient (module docstring): per chunk ``g'`` goes into a
    zero-bordered channels-last buffer, ``E`` ``(nb, H, W, m, 2 * out)`` is formed by shifted
    slices, then ``grad_x += E W`` (in place for channels-last) and ``grad_w += E^T x``."""
    k, _, _, pad = geo
    n, co, ho, wo = grad.shape
    ci, h, w = x.shape[1:]
    m = (k * k - 1) // 2
    # x(p) meets g'(q) for q = p + pad - (tap index): a border of k - 1 - pad around g' makes
    # every tap's window over the input's h x w pixels a plain slice.
    border = k - 1 - pad
    step = _images_per_chunk(x, h * w * m * 2 * co * grad.element_size(), _GRAD_CHUNK_BYTES)
    # Zeroed once: g' is written only into the interior, the border stays zero.
    gp_buf = grad.new_zeros(step, ho + 2 * border, wo + 2 * border, 2 * co)
    e_buf = grad.new_empty(step, h, w, m, 2 * co)
    gv = grad.permute(0, 2, 3, 1)  # (n, ho, wo, out)
    xc, yc = xc.view(wo, co), yc.view(ho, 1, co)
    # The weight as (m * 2 out, in), rows (tap, Wx or Wy, out); a copy with contiguous rows.
    w_rows = w1.view(2 * co, m, ci).transpose(0, 1).reshape(m * 2 * co, ci)
    gw_sum = None
    views: list[tuple[Tensor, Tensor]] = []
    for i in range(0, n, step):
        nb = min(step, n - i)
        gp, e = gp_buf[:nb], e_buf[:nb]
        if not views or nb < step:  # views of the buffers, made once per chunk size
            views = tap_windows(gp, geo, h, w)
            interior = gp[:, border : border + ho, border : border + wo].unflatten(3, (2, co))
            e_views = e.unsqueeze(3).unbind(4)  # (nb, h, w, 1, 2 * out) per tap
        torch.mul(gv[i : i + nb], xc, out=interior[..., 0, :])  # g' = ((X - cx) g, (Y - cy) g)
        torch.mul(gv[i : i + nb], yc, out=interior[..., 1, :])
        # E_j = g'(p - d_j) - g'(p + d_j): the windows at -d and +d, in that order.
        for (plus, minus), e_j in zip(views, e_views, strict=True):
            torch.sub(minus, plus, out=e_j)
        e_rows = e.view(nb * h * w, m * 2 * co)
        if need_w:
            x_rows = x[i : i + nb].permute(0, 2, 3, 1).reshape(-1, ci)
            gw_sum = sum_chunks(gw_sum, torch.mm(e_rows.t(), x_rows))
        if grad_x is not None:
            gx_i = grad_x[i : i + nb].permute(0, 2, 3, 1)
            if gx_i.is_contiguous():  # channels-last: the GEMM accumulates in place
                gx_i.view(-1, ci).addmm_(e_rows, w_rows)
            else:
                gx_i += torch.mm(e_rows, w_rows).view(nb, h, w, ci)
    if gw_sum is None:
        return None
    # Back to w1's (Wx or Wy, out, tap, in) order and dtype in one pass.
    grad_w = torch.empty_like(w1, memory_format=torch.contiguous_format)
    grad_w.view(2 * co, m, ci).copy_(gw_sum.view(m, 2 * co, ci).transpose(0, 1))
    return grad_w


def _chunk_size(x: Tensor, w1: Tensor, k: int, ho: int, wo: int) -> int:
    """Images per chunk on CPU: about ``_CHUNK_BYTES`` of differences, and at least
    ``_WEIGHT_REUSE`` times the GEMM's weight (every chunk reads the whole weight: with many
    channels on small maps it outweighs a small chunk's data). The batch elsewhere."""
    per_image = ho * wo * (k * k - 1) // 2 * x.shape[1] * x.element_size()
    return _images_per_chunk(x, per_image, max(_CHUNK_BYTES, _weight_reuse_bytes(w1)))


def _weight_reuse_bytes(w1: Tensor) -> int:
    """The least chunk that reads the GEMM weight ``w1`` often enough: ``_WEIGHT_REUSE``
    times its bytes."""
    return _WEIGHT_REUSE * w1.numel() * w1.element_size()


def _images_per_chunk(x: Tensor, per_image: int, budget: int) -> int:
    """``budget // per_image`` images of ``x``'s batch (at least 1) on CPU, the batch elsewhere."""
    n = x.shape[0]
    if x.device.type != "cpu":
        return max(n, 1)
    return max(1, min(n, budget // max(per_image, 1)))


def _chunks(
    x: Tensor, geo: Geometry, ho: int, wo: int, step: int
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield ``(first image, padded chunk (nb, hp, wp, C), differences (nb, ho, wo, groups,
    m, C / groups))`` over chunks of ``step`` images; the buffers are reused between chunks."""
    k, _, groups, pad = geo
    n, c, h, w = x.shape
    m = (k * k - 1) // 2
    hp, wp = h + 2 * pad, w + 2 * pad
    # Zeroed once: the copies below only write the interior, so the border stays zero.
    xp_buf = x.new_zeros(step, hp, wp, c)
    d_buf = x.new_empty(step, ho, wo, groups, m, c // groups)
    tap_views: list[tuple[Tensor, Tensor]] = []
    for i in range(0, n, step):
        nb = min(step, n - i)
        xp, d = xp_buf[:nb], d_buf[:nb]
        if not tap_views or nb < step:  # views of the buffers, made once per chunk size
            interior = xp[:, pad : pad + h, pad : pad + w]
            tap_views, out_views = tap_windows(xp, geo, ho, wo), d.unbind(4)
        interior.copy_(x[i : i + nb].permute(0, 2, 3, 1))
        for (plus, minus), out in zip(tap_views, out_views, strict=True):
            torch.sub(plus, minus, out=out)
        yield i, xp, d


def odd_tap_twist(
    x: Tensor,
    w0: Tensor,
    bias: Tensor | None,
    w1: Tensor,
    centers: tuple[Tensor, Tensor],
    grids: tuple[Tensor, Tensor],
    geo: Geometry,
) -> Tensor:
    """``conv(x, W0) + bias + (X - cx) * conv(x, Wx) + (Y - cy) * conv(x, Wy)``, the twist
    terms from the odd kernels' free taps.

    Args:
        x: ``(N, in, H, W)``, the input (zero-padded by ``pad`` on every side inside).
        w0, bias: the main convolution's kernel ``(out, in / groups, k, k)`` and bias.
        w1: ``(2 * out, m * in / groups, 1, 1)``, ``m = (k*k-1)/2``: output channels
            ``(group, Wx or Wy, out / groups)``, input channels ``(tap, in / groups)``.
        centers: ``(cx, cy)``, each ``(out,)``.
        grids: ``(X, Y)``, ``X`` ``(W_out,)`` and ``Y`` ``(H_out, 1)`` (float32 or wider).
        geo: the layer's kernel size, stride, groups and zero padding.

    Returns ``(N, out, H_out, W_out)`` in the main convolution's memory format and dtype.
    """
    (cx, cy), (gx, gy) = centers, grids
    if tracing():
        out = F.conv2d(x, w0, bias, geo.stride, geo.pad, 1, geo.groups)
        return out + twist_terms_reference(x, w1, cx, cy, gx, gy, geo)
    return _OddTapTwist.apply(x, w0, bias, w1, cx, cy, gx, gy, geo)
