"""The form of ConvTwist that graphs made to be kept record (``torch.export``,
``torch.onnx.export``, ``torch.jit.trace``), whatever ``impl`` says: the three kernels
stacked in a few ops, one convolution, and the tail as one product with ``(1, X - cx,
Y - cy)`` and a sum."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from symconv.nn._twist_kernels import constant, make_grid, odd_expansion_rows

__all__ = ["export_forward"]


class _TwistLayer(Protocol):
    """What :func:`export_forward` reads of a ConvTwist."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    weight: Tensor
    twist_x: Tensor
    twist_y: Tensor
    center_x: Tensor
    center_y: Tensor
    bias: Tensor | None


def _stacked_kernels(layer: _TwistLayer) -> tuple[Tensor, Tensor | None]:
    """``W``, ``Wx``, ``Wy`` stacked per group as ``(3 * out, in / g, k, k)`` (the odd kernels
    as one product of the free taps with the constant tap -> kernel matrix), and the bias
    padded with zeros to ``(3 * out,)`` (or ``None``). Without groups no reshape is needed
    between the stacked blocks."""
    k, g, out = layer.kernel_size[0], layer.groups, layer.out_channels
    opg, cig = out // g, layer.in_channels // g
    tx, ty = layer.twist_x, layer.twist_y
    if g > 1:
        tx, ty = tx.view(g, 1, opg, cig, -1), ty.view(g, 1, opg, cig, -1)
    taps = torch.cat([tx, ty], dim=0 if g == 1 else 1)
    odd = torch.matmul(taps, constant(odd_expansion_rows(k), taps).to(taps.dtype))
    if g == 1:
        weight = torch.cat([layer.weight, odd.view(2 * out, cig, k, k)])
    else:
        w0 = layer.weight.view(g, 1, opg, cig, k, k)
        weight = torch.cat([w0, odd.view(g, 2, opg, cig, k, k)], 1).view(3 * out, cig, k, k)
    if layer.bias is None:
        return weight, None
    zeros = constant([0.0] * (2 * out), layer.bias).to(layer.bias.dtype)
    if g == 1:
        return weight, torch.cat([layer.bias, zeros])
    b = layer.bias.view(g, 1, opg)
    return weight, torch.cat([b, zeros.view(g, 2, opg)], 1).view(3 * out)


def export_forward(layer: _TwistLayer, x: Tensor, pad: tuple[int, int]) -> Tensor:
    """``layer``'s output for the (already padded, if not zeros) input ``x`` ``(N, in, H, W)``
    -> ``(N, out, H_out, W_out)``, in few nodes: one convolution with the stacked kernels
    (rows ``(group, W / Wx / Wy, out / g)``: each group's three outputs in its own slice) and
    the tail ``a + (X - cx) b + (Y - cy) c`` as one product with a ``(3, out, H_out, W_out)``
    grid (``(g, 3, out / g, ...)`` with groups) and a sum."""
    g, out = layer.groups, layer.out_channels
    opg = out // g
    blocks = (3, out) if g == 1 else (g, 3, opg)
    weight, bias = _stacked_kernels(layer)
    y = F.conv2d(x, weight, bias, layer.stride, pad, 1, g)
    n, _, h, w = y.shape
    zeros = constant([0.0] * out, layer.center_x).to(layer.center_x.dtype)
    centers = torch.cat([zeros, layer.center_x, layer.center_y]).view(3, g, opg)
    if g > 1:
        centers = centers.transpose(0, 1)
    grid = _export_grid(h, w, y) - centers.reshape(*blocks, 1, 1)
    # -1: one constant shape for any batch (an empty batch needs 0, except in a trace)
    lead = -1 if torch.jit.is_tracing() or n != 0 else 0
    result = (y.view(lead, *blocks, h, w) * grid.to(y.dtype)).sum(len(blocks) - 1)
    return result if g == 1 else result.view(lead, out, h, w)


def _export_grid(h: int, w: int, like: Tensor) -> Tensor:
    """``(1, X, Y)`` as ``(3, 1, h, w)``, in float32 or wider (``like``'s dtype if wider): a
    constant for concrete sizes, else computed."""
    if isinstance(h, int) and isinstance(w, int):
        xs = [2 * j / w for j in range(w)]
        ys = [2 * i / h for i in range(h)]
        return constant([[[[1.0] * w] * h], [[xs] * h], [[[y] * w for y in ys]]], like)
    exact = torch.promote_types(like.dtype, torch.float32)
    gx, gy = make_grid(h, w, like.device, exact)
    ones = torch.ones(h, w, dtype=exact, device=like.device)
    return torch.stack([ones, gx.expand(h, w), gy.expand(h, w)]).unsqueeze(1)
