"""ConvTwist: a convolution that can learn to rotate and dilate, not only translate and blur.

A small convolution applied many times generates translations (Sobel-like kernels) and
blurring; it cannot generate rotations or scalings, whose generators depend on position.
``ConvTwist`` adds the two position-dependent terms (after Liu Yao's "Convolutional Layer
with a Twist")::

    out = conv(x, W) + (X - cx) * conv(x, Wx) + (Y - cy) * conv(x, Wy)  (+ bias)

* ``W`` is an ordinary kernel, ``Wx`` and ``Wy`` are *odd* kernels (``K(-d) = -K(d)``,
  centre 0): discrete first-order derivative operators. With ``Wx ~ d/dx`` and
  ``Wy ~ d/dy`` the sum ``(X - cx) d/dx + (Y - cy) d/dy`` generates a scaling about
  ``(cx, cy)``; with ``Wx ~ -d/dy`` and ``Wy ~ d/dx`` it generates a rotation.
* ``X[j] = 2 j / W_out`` and ``Y[i] = 2 i / H_out`` are the column and row of the
  *output* pixel scaled to ``[0, 2)``; ``cx``, ``cy`` are learnable per output channel.
  The image centre is at ``X = (W_out - 1) / W_out``, ``Y = (H_out - 1) / H_out``.
* Padding is ``kernel_size // 2`` on every side, so a stride-1 layer keeps the size.
* A 1x1 kernel has no twist terms (its odd kernels are zero), so ``kernel_size`` is 3 or more.

Implementation: the centres are folded into the plain kernel,
``conv(x, W) - cx conv(x, Wx) - cy conv(x, Wy) = conv(x, W - cx Wx - cy Wy)``, leaving
``a + X * b + Y * c`` with fixed grids as the tail (the ``'taps'`` path instead applies
``X - cx`` and ``Y - cy`` in its tail and takes the centres' gradients from ``W``'s);
multiplying by constants saves nothing of output size for backward. Three paths compute
it (``impl``); every one keeps for backward only what a plain convolution keeps (its
input):

* ``'stacked'``: *one* convolution with the three kernels stacked along the output axis,
  3x the multiply-adds of a plain convolution.
* ``'split'``: the same three kernels as three convolution calls (same work; faster than
  one stacked call with oneDNN on CPU at large feature maps).
* ``'taps'``: ``b`` and ``c`` from the odd kernels' free taps: the differences
  ``x(p + d) - x(p - d)`` and one GEMM (a 1x1 convolution) that weighs them, 17/9 of the
  multiply-adds for 3x3. On CPU it runs in cache-sized chunks of images; the backward
  recomputes the differences, or in reduced precision takes them on the output gradient
  instead (:mod:`symconv.nn._twist_taps`).

``'auto'`` takes ``'stacked'`` on CUDA and other accelerators; on CPU ``'taps'`` from 32
input channels per group, ``'stacked'`` for at most 8 input channels without groups (a first
layer: the extra outputs are nearly free) and ``'split'`` otherwise (depthwise and narrow
grouped layers): the fastest path per device and shape that ``benchmarks/bench_twist.py``
measured (``benchmarks/README.md``).

Graphs made to be kept (``torch.export``, ``torch.onnx.export``, ``torch.jit.trace``) record
one compact form whatever ``impl`` says: the three kernels stacked in a few ops, one
convolution, and the tail as one product with ``(1, X - cx, Y - cy)`` and a sum.
``torch.fx.symbolic_trace`` (and so torchvision's ``create_feature_extractor``) records the
layer as one call of :func:`_conv_twist` on its input and parameters, which runs the paths
above. ``torch.jit.script`` is not supported and says so; ``torch.compile`` runs the chosen
path.

The odd kernels are parametrised by their free taps only: ``twist_x`` and ``twist_y``
hold, for every ``(out, in / groups)`` pair, the ``(k * k - 1) / 2`` taps that precede
the centre in row-major order; the taps after the centre are their negatives in reverse
order and the centre is zero. Optimisers, weight decay and DDP therefore act on the free
taps and the kernels stay exactly odd.
"""

# No postponed annotations here: torch.fx copies forward's annotations into a traced graph's
# code, and a string there breaks pickling the GraphModule.
import contextlib
import functools
import math
import numbers
import warnings
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from symconv.nn._cache import caching_allowed, tracing, version_key
from symconv.nn._twist_taps import Geometry, odd_tap_twist

__all__ = ["ConvTwist"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_IMPLS = ("auto", "stacked", "split", "taps")
_GRID_CACHE_SIZE = 16
# impl='auto' on CPU (measured with benchmarks/bench_twist.py, one thread, training steps): the
# tap path from this many input channels per group (its GEMM needs a wide reduction to pay for
# the differences); one stacked convolution up to _STACKED_MAX_CHANNELS_CPU input channels
# without groups; three convolutions otherwise.
_TAPS_MIN_CHANNELS_CPU = 32
_STACKED_MAX_CHANNELS_CPU = 8
# The dtypes autocast casts for a convolution: under autocast nn.Conv2d takes an input and
# parameters of any two of these (float64 and integer tensors it leaves alone).
_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The names nn.Conv2d's dtype message gives (c10's), for one message on every path.
_C_TYPE_NAMES = {
    torch.bool: "bool",
    torch.uint8: "unsigned char",
    torch.int8: "signed char",
    torch.int16: "short int",
    torch.int32: "int",
    torch.int64: "long int",
    torch.float16: "c10::Half",
    torch.bfloat16: "c10::BFloat16",
    torch.float32: "float",
    torch.float64: "double",
    torch.complex64: "c10::complex<float>",
    torch.complex128: "c10::complex<double>",
}


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int, got {type(value).__name__}")
    return int(value)


def _positive_int(name: str, value: object) -> int:
    v = _int(name, value)
    if v < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return v


def _pair(name: str, value: object, check=_positive_int) -> tuple[int, int]:
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"{name}={value!r} must be an int or a pair of ints")
        return (check(name, value[0]), check(name, value[1]))
    v = check(name, value)
    return (v, v)


def _check_padding(padding: object, k: int, stride: tuple[int, int]) -> None:
    """``padding`` must be what ConvTwist does anyway: ``None``, ``k // 2`` (an int or a
    pair) or ``'same'`` (at stride 1, as ``nn.Conv2d`` allows it)."""
    if padding is None:
        return
    half = k // 2
    allowed = (
        f"ConvTwist pads kernel_size // 2 = {half} on every side: pass padding={half}, "
        "'same' (stride 1) or nothing"
    )
    if isinstance(padding, str):
        if padding == "same" and stride == (1, 1):
            return
        if padding == "same":
            raise ValueError(
                f"padding='same' is not supported for strided convolutions (stride={stride}), "
                f"as in nn.Conv2d; {allowed}"
            )
        raise ValueError(f"padding={padding!r} is not allowed; {allowed}")
    if _pair("padding", padding, _int) != (half, half):
        raise ValueError(f"padding={padding!r} is not allowed; {allowed}")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. 'meta')
        return False


def _exporting() -> bool:
    """Whether a graph is being recorded to be kept (``torch.export``, ``torch.jit.trace``
    and the ONNX exporters, which run one of them), as opposed to compiled and run by
    ``torch.compile``."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def _constant(values: list, like: Tensor) -> Tensor:
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
def _odd_expansion_rows(k: int) -> list[list[float]]:
    m = (k * k - 1) // 2
    rows = [[0.0] * (k * k) for _ in range(m)]
    for j in range(m):
        rows[j][j], rows[j][k * k - 1 - j] = 1.0, -1.0
    return rows


@functools.lru_cache(maxsize=32)
def _odd_expansion_cached(k: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(_odd_expansion_rows(k), dtype=dtype, device=device)


def _odd_expansion(k: int, like: Tensor) -> Tensor:
    """The ``((k*k-1)/2, k*k)`` matrix taking free taps to a flattened odd kernel: ``+1`` at
    tap ``j``, ``-1`` at its mirror ``k*k-1-j`` (cached per size, device and dtype)."""
    if tracing():
        return _odd_expansion_cached.__wrapped__(k, like.device, like.dtype)
    return _odd_expansion_cached(k, like.device, like.dtype)


def _odd_kernel(free: Tensor, kernel_size: int) -> Tensor:
    """Free taps ``(..., (k*k-1)/2)`` -> odd kernels ``(..., k, k)`` (e.g. ``(out, in/g, k, k)``).

    Row-major index ``i`` and ``k*k - 1 - i`` are the taps at ``d`` and ``-d``.
    """
    centre = free.new_zeros(*free.shape[:-1], 1)
    flat = torch.cat([free, centre, -free.flip(-1)], dim=-1)
    return flat.unflatten(-1, (kernel_size, kernel_size))


class _Spec(NamedTuple):
    """What a ConvTwist's forward needs besides its parameters (plain values, so a traced
    graph can hold them)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: tuple[int, int]
    groups: int
    padding_mode: str
    impl: str


class _TwistForward:
    """ConvTwist's forward computation, reading only the attributes listed below: shared by
    the module and by :func:`_conv_twist`, the form ``torch.fx`` records.

    Attributes: ``in_channels``, ``out_channels``, ``kernel_size`` ``(k, k)``, ``stride``,
    ``padding`` ``(k // 2, k // 2)``, ``groups``, ``padding_mode``, ``impl``; the parameters
    ``weight``, ``twist_x``, ``twist_y``, ``center_x``, ``center_y``, ``bias``; the caches
    ``_grids`` and ``_kernel_cache``.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    padding_mode: str
    impl: str
    weight: Tensor
    twist_x: Tensor
    twist_y: Tensor
    center_x: Tensor
    center_y: Tensor
    bias: Tensor | None
    _grids: OrderedDict[tuple[object, ...], tuple[Tensor, Tensor]]
    _kernel_cache: dict[str, tuple[tuple[object, ...], tuple[Tensor | None, ...]]]

    def _params(self) -> tuple[Tensor | None, ...]:
        return (self.weight, self.twist_x, self.twist_y, self.center_x, self.center_y, self.bias)

    def _grid(
        self, h: int, w: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """``X`` of shape ``(w,)`` and ``Y`` of shape ``(h, 1)``: ``2 j / w`` and ``2 i / h``."""
        if tracing():
            # Traced graphs must compute the grids themselves (and may fold them).
            return self._make_grid(h, w, device, dtype)
        key = (h, w, device, dtype)
        grids = self._grids.get(key)
        if grids is None:
            grids = self._make_grid(h, w, device, dtype)
            self._grids[key] = grids
            if len(self._grids) > _GRID_CACHE_SIZE:
                self._grids.popitem(last=False)
        return grids

    @staticmethod
    def _make_grid(
        h: int, w: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        # Computed in at least float32 and rounded once to ``dtype``.
        exact = torch.promote_types(dtype, torch.float32)
        gx = (torch.arange(w, device=device, dtype=exact) * 2 / w).to(dtype)
        gy = (torch.arange(h, device=device, dtype=exact) * 2 / h).to(dtype)
        return gx, gy.unsqueeze(1)

    def _free_taps(self) -> tuple[Tensor, Tensor]:
        """The free taps of ``Wx`` and ``Wy`` as ``(g, out / g, in / g, (k*k-1)/2)`` views."""
        g, out = self.groups, self.out_channels
        return self.twist_x.unflatten(0, (g, out // g)), self.twist_y.unflatten(0, (g, out // g))

    def _folded_weight(self) -> Tensor:
        """``W - cx Wx - cy Wy`` as a contiguous ``(out_channels, in_channels / groups, k, k)``
        (the float64 convolution backward rejects a channels-last kernel)."""
        k, out = self.kernel_size[0], self.out_channels
        # The odd kernel is linear in its taps, so the fold runs on the (k*k-1)/2 free taps
        # and one product with the constant tap -> kernel matrix adds it to W: less work than
        # building the odd kernels, and autograd keeps taps, not full kernels.
        t = torch.addcmul(
            self.twist_x * self.center_x.view(out, 1, 1),
            self.twist_y,
            self.center_y.view(out, 1, 1),
        )
        w0 = torch.addmm(
            self.weight.reshape(-1, k * k),
            t.view(t.shape[0] * t.shape[1], t.shape[2]),
            _odd_expansion(k, t),
            alpha=-1,
        )
        return w0.view(self.weight.shape)

    def fused_weight(self) -> tuple[Tensor, Tensor | None]:
        """The single convolution's kernel ``(3 * out_channels, in_channels / groups, k, k)``
        and bias ``(3 * out_channels,)`` (or ``None``) of the ``'stacked'`` path.

        Per group, the rows are that group's ``W - cx Wx - cy Wy``, ``Wx``, ``Wy``, so a
        grouped convolution keeps every group's three outputs inside its own slice.
        """
        g, out = self.groups, self.out_channels
        w0 = self._folded_weight().unflatten(0, (g, out // g))
        odd = _odd_kernel(torch.stack(self._free_taps(), dim=1), self.kernel_size[0])
        # (g, 3, out / g, ...) built contiguous: a strided kernel sends oneDNN down slow paths.
        weight = torch.cat([w0.unsqueeze(1), odd], dim=1).flatten(0, 2)
        bias = None
        if self.bias is not None:
            b = self.bias.view(g, 1, out // g)
            bias = torch.cat([b, b.new_zeros(g, 2, out // g)], dim=1).flatten()
        return weight, bias

    def _path_kernels(self, path: str) -> tuple[Tensor | None, ...]:
        """The kernels ``path`` convolves with, built from the parameters (differentiably).

        When no gradient can reach the parameters (``no_grad``, ``inference_mode``, frozen
        parameters) they are cached, so inference does not rebuild them per call; the key
        holds the parameters' identity, storage and version counter, so optimiser steps,
        ``load_state_dict``, ``set_twist_kernels`` and ``.to()`` invalidate it (writes
        through ``.data`` do not: call :meth:`clear_cache` after those).
        """
        params = self._params()
        cacheable = caching_allowed(params)
        if cacheable:
            key = version_key(params)
            hit = self._kernel_cache.get(path)
            if hit is not None and hit[0] == key:
                return hit[1]
        with torch.no_grad() if cacheable else contextlib.nullcontext():
            if path == "stacked":
                kernels: tuple[Tensor | None, ...] = self.fused_weight()
            elif path == "split":
                k = self.kernel_size[0]
                kernels = (
                    self._folded_weight(),
                    _odd_kernel(self.twist_x, k),
                    _odd_kernel(self.twist_y, k),
                )
            else:  # taps: (2 out, m * in/g, 1, 1), rows (group, x or y, out / g), columns
                # (tap, in / g); one copy writes the transposed taps contiguous (canonical
                # strides: a 1x1 kernel whose strides also read as channels-last can get a
                # wrong weight gradient from a channels-last convolution in float64 with
                # in/groups == 1, in PyTorch's CPU kernels). The centres stay out of the main
                # kernel here.
                tx, ty = self._free_taps()
                w1 = torch.stack([tx.transpose(-1, -2), ty.transpose(-1, -2)], dim=1)
                kernels = (w1.view(2 * self.out_channels, -1, 1, 1),)
        if cacheable:
            self._kernel_cache[path] = (key, kernels)
        return kernels

    def _path(self, input: Tensor) -> str:
        if self.impl != "auto":
            return self.impl
        if input.device.type != "cpu":
            # stacked: the fastest path on CUDA at every shape measured (benchmarks/README.md)
            return "stacked"
        per_group = self.in_channels // self.groups
        if per_group >= _TAPS_MIN_CHANNELS_CPU:
            return "taps"
        if self.groups == 1 and per_group <= _STACKED_MAX_CHANNELS_CPU:
            return "stacked"
        return "split"

    def _check_input(self, input: object) -> None:
        """The input's type, shape and dtype, checked as ``nn.Conv2d`` checks them: the
        parameters' dtype, or under autocast any dtype autocast casts."""
        if not isinstance(input, Tensor):
            raise TypeError(f"ConvTwist expects a torch.Tensor input, got {type(input).__name__}")
        if torch.jit.is_tracing():
            # The trace warns that sizes read in Python become constants: these are.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                bad_shape = bool(input.dim() not in (3, 4) or input.shape[-3] != self.in_channels)
        else:
            bad_shape = input.dim() not in (3, 4) or input.shape[-3] != self.in_channels
        if bad_shape:
            raise ValueError(
                f"ConvTwist expects input of shape (N, {self.in_channels}, H, W) or "
                f"({self.in_channels}, H, W), got {tuple(input.shape)}"
            )
        have, want = input.dtype, self.weight.dtype
        if have != want and not (
            have in _AUTOCAST_DTYPES
            and want in _AUTOCAST_DTYPES
            and _autocast_enabled(input.device.type)
        ):
            raise RuntimeError(
                f"Input type ({_C_TYPE_NAMES.get(have, str(have))}) and weight type "
                f"({_C_TYPE_NAMES.get(want, str(want))}) should be the same"
            )

    def _forward(self, input: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` or ``(in_channels, H, W)`` -> ``(N, out_channels, H_out,
        W_out)`` or ``(out_channels, H_out, W_out)``."""
        self._check_input(input)
        if input.dim() == 3:
            return self._forward(input.unsqueeze(0)).squeeze(0)
        if self.padding_mode == "zeros":
            x, pad = input, self.padding
        else:
            p = self.padding[0]
            x, pad = F.pad(input, (p, p, p, p), mode=self.padding_mode), (0, 0)
            if input.is_contiguous(memory_format=torch.channels_last):
                # Circular padding returns channels-first; keep the input's layout.
                x = x.contiguous(memory_format=torch.channels_last)
        if _exporting():
            return self._forward_export(x, pad)
        g, opg = self.groups, self.out_channels // self.groups
        path = self._path(input)
        if path == "taps":
            return self._forward_taps(x, pad)
        if path == "split":
            return self._forward_split(x, pad)
        weight, bias = self._path_kernels("stacked")
        y = F.conv2d(x, weight, bias, self.stride, pad, 1, g)
        n, _, h, w = y.shape
        a, b, c = y.view(n, g, 3, opg, h, w).unbind(2)
        return self._tail(a, b, c)

    def _forward_split(self, x: Tensor, pad: tuple[int, int]) -> Tensor:
        """Three convolutions (``W - cx Wx - cy Wy``, ``Wx``, ``Wy``) and the same tail: the
        stacked path's work and memory, as three calls (faster with oneDNN on CPU)."""
        g, opg = self.groups, self.out_channels // self.groups
        w0, wx, wy = self._path_kernels("split")
        a = F.conv2d(x, w0, self.bias, self.stride, pad, 1, g)
        b = F.conv2d(x, wx, None, self.stride, pad, 1, g)
        c = F.conv2d(x, wy, None, self.stride, pad, 1, g)
        n, _, h, w = a.shape
        shape = (n, g, opg, h, w)
        return self._tail(a.view(shape), b.view(shape), c.view(shape))

    def _forward_taps(self, x: Tensor, pad: tuple[int, int]) -> Tensor:
        """``conv(x, Wx)`` and ``conv(x, Wy)`` from their free taps: the ``m = (k*k-1)/2``
        differences ``x(p + d) - x(p - d)`` per input channel, formed by shifted slices of the
        padded input into one channels-last buffer, and one grouped 1x1 convolution that
        weighs them: ``2 m / k^2`` of a convolution's multiply-adds instead of 2 (17/9 in all
        for 3x3, not 3)."""
        k, g = self.kernel_size[0], self.groups
        if x.dtype in _AUTOCAST_DTYPES and _autocast_enabled(x.device.type):
            # Cast once, as autocast casts a convolution's input: the main convolution and
            # the differences share the low-precision copy.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        (w1,) = self._path_kernels("taps")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        h, w = x.shape[-2:]
        ho = (h + 2 * pad[0] - k) // self.stride[0] + 1
        wo = (w + 2 * pad[1] - k) // self.stride[1] + 1
        # The grids in at least float32: X - cx is formed inside, then rounded once.
        gx, gy = self._grid(ho, wo, x.device, torch.promote_types(x.dtype, torch.float32))
        geo = Geometry(k, self.stride, g, pad[0])
        # Same dtypes already, or autocast's cast of the parameters.
        w0, w1 = self.weight.to(x.dtype), w1.to(x.dtype)
        return odd_tap_twist(x, w0, bias, w1, self.center_x, self.center_y, gx, gy, geo)

    def _tail(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """``a + X * b + Y * c`` on ``(N, g, out / g, H_out, W_out)`` views."""
        n, g, opg, h, w = a.shape
        gx, gy = self._grid(h, w, a.device, a.dtype)
        # Multiplying by constant grids saves nothing of output size for backward.
        out = torch.addcmul(torch.addcmul(a, b, gx), c, gy)
        return out.reshape(n, g * opg, h, w)

    def _forward_export(self, x: Tensor, pad: tuple[int, int]) -> Tensor:
        """The form exported graphs hold, in few nodes: one convolution with ``W``, ``Wx``
        and ``Wy`` stacked per group (the odd kernels as one product of the free taps with
        the constant tap -> kernel matrix) and the tail ``a + (X - cx) b + (Y - cy) c`` as
        one product with a ``(3, out, H_out, W_out)`` grid (``(g, 3, out / g, ...)`` with
        groups) and a sum. Without groups no reshape is needed between the stacked blocks."""
        k, g, out = self.kernel_size[0], self.groups, self.out_channels
        opg, cig = out // g, self.in_channels // g
        # Rows (group, W / Wx / Wy, out / g): each group's three outputs in its own slice.
        blocks = (3, out) if g == 1 else (g, 3, opg)
        tx, ty = self.twist_x, self.twist_y
        if g > 1:
            tx, ty = tx.view(g, 1, opg, cig, -1), ty.view(g, 1, opg, cig, -1)
        taps = torch.cat([tx, ty], dim=len(blocks) - 2)
        odd = torch.matmul(taps, _constant(_odd_expansion_rows(k), taps).to(taps.dtype))
        if g == 1:
            weight = torch.cat([self.weight, odd.view(2 * out, cig, k, k)])
        else:
            w0 = self.weight.view(g, 1, opg, cig, k, k)
            weight = torch.cat([w0, odd.view(g, 2, opg, cig, k, k)], 1).view(3 * out, cig, k, k)
        bias = None
        if self.bias is not None:
            zeros = _constant([0.0] * (2 * out), self.bias).to(self.bias.dtype)
            if g == 1:
                bias = torch.cat([self.bias, zeros])
            else:
                b = self.bias.view(g, 1, opg)
                bias = torch.cat([b, zeros.view(g, 2, opg)], 1).view(3 * out)
        y = F.conv2d(x, weight, bias, self.stride, pad, 1, g)
        n, _, h, w = y.shape
        zeros = _constant([0.0] * out, self.center_x).to(self.center_x.dtype)
        centres = torch.cat([zeros, self.center_x, self.center_y]).view(3, g, opg)
        if g > 1:
            centres = centres.transpose(0, 1)
        grid = self._export_grid(h, w, y) - centres.reshape(*blocks, 1, 1)
        # -1: one constant shape for any batch (an empty batch needs 0, except in a trace)
        lead = -1 if torch.jit.is_tracing() or n != 0 else 0
        out_ = (y.view(lead, *blocks, h, w) * grid.to(y.dtype)).sum(len(blocks) - 1)
        return out_ if g == 1 else out_.view(lead, out, h, w)

    @staticmethod
    def _export_grid(h: int, w: int, like: Tensor) -> Tensor:
        """``(1, X, Y)`` as ``(3, 1, h, w)``, in float32 or wider (``like``'s dtype if wider):
        a constant for concrete sizes, else computed."""
        if isinstance(h, int) and isinstance(w, int):
            xs = [2 * j / w for j in range(w)]
            ys = [2 * i / h for i in range(h)]
            return _constant([[[[1.0] * w] * h], [[xs] * h], [[[y] * w for y in ys]]], like)
        exact = torch.promote_types(like.dtype, torch.float32)
        gx, gy = _TwistForward._make_grid(h, w, like.device, exact)
        ones = torch.ones(h, w, dtype=exact, device=like.device)
        return torch.stack([ones, gx.expand(h, w), gy.expand(h, w)]).unsqueeze(1)


@torch.fx.wrap
def _conv_twist(
    input: Tensor,
    weight: Tensor,
    twist_x: Tensor,
    twist_y: Tensor,
    center_x: Tensor,
    center_y: Tensor,
    bias: Tensor | None,
    spec: tuple,
) -> Tensor:
    """A ConvTwist's forward as one function of its input, parameters and :class:`_Spec`
    fields: what ``torch.fx.symbolic_trace`` records for the layer (one node, so no control
    flow runs on proxies; the checks and the path choice run when the graph runs)."""
    return _FunctionalTwist((weight, twist_x, twist_y, center_x, center_y, bias), spec)._forward(
        input
    )


class _FunctionalTwist(_TwistForward):
    """The forward's state rebuilt from parameters and a spec (per call: fresh caches)."""

    def __init__(self, params: tuple[Tensor | None, ...], spec: tuple) -> None:
        self.weight, self.twist_x, self.twist_y, self.center_x, self.center_y, self.bias = params
        spec = _Spec(*spec)
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        k = spec.kernel_size
        self.kernel_size, self.padding = (k, k), (k // 2, k // 2)
        self.stride, self.groups = tuple(spec.stride), spec.groups
        self.padding_mode, self.impl = spec.padding_mode, spec.impl
        self._grids = OrderedDict()
        self._kernel_cache = {}


class ConvTwist(_TwistForward, nn.Module):
    r"""A 2-D convolution plus position-weighted odd convolutions that generate rotations and
    dilations about learnable centres.

    .. math::
        \text{out} = x \star W + (X - c_x)\,(x \star W_x) + (Y - c_y)\,(x \star W_y) + b

    A drop-in for ``nn.Conv2d(in_channels, out_channels, k, stride, padding=k // 2,
    groups=groups, bias=bias)``: the same arguments in the same order, and the same defaults
    (a bias, like ``nn.Conv2d``; except ``padding``, which can only be ``k // 2``).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: odd size ``k >= 3`` of the square kernels (an int or a pair ``(k, k)``).
        stride: stride (an int or a pair); the grids follow the *output* pixels.
        padding: ``None`` (default), ``k // 2`` (an int or a pair) or ``'same'`` at stride 1:
            accepted so ``nn.Conv2d`` calls carry over; the layer always pads ``k // 2``.
        dilation: 1 (an int or a pair); accepted for the same reason.
        groups: blocked connections as in ``nn.Conv2d`` (``groups == in_channels`` for a
            depthwise layer).
        bias: add a learnable bias per output channel (default ``True``, as ``nn.Conv2d``).
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
        device, dtype: factory arguments for the parameters.
        init_max: the centres start uniform in ``[-init_max, init_max]``.
        impl: ``'stacked'`` (one convolution of the three stacked kernels), ``'split'``
            (three convolutions), ``'taps'`` (the odd kernels through their free taps) or
            ``'auto'``; all compute the same function (see the module docstring).

    Raises ``TypeError`` for an argument of the wrong type and ``ValueError`` for a value
    out of range, naming the argument, its value and what is allowed.

    Parameters:
        weight: ``W``, ``(out_channels, in_channels / groups, k, k)``.
        twist_x, twist_y: the free taps of ``Wx`` and ``Wy``,
            ``(out_channels, in_channels / groups, (k * k - 1) / 2)``.
        center_x, center_y: ``cx`` and ``cy``, ``(out_channels,)``, in grid units.
        bias: ``(out_channels,)`` or ``None``.

    The odd kernels as the forward uses them are the read-only (differentiable) properties
    :attr:`weight_x` and :attr:`weight_y`; set them with :meth:`set_twist_kernels`.

    Shapes: input ``(N, C_in, H, W)`` or ``(C_in, H, W)``, of the parameters' dtype (under
    autocast: float32, float16 or bfloat16, as ``nn.Conv2d`` takes it); output
    ``(N, C_out, H_out, W_out)`` with ``H_out = (H - 1) // stride + 1`` (and likewise
    ``W_out``).

    Example::

        >>> layer = ConvTwist(16, 32, stride=2)
        >>> layer(torch.randn(4, 16, 28, 40)).shape
        torch.Size([4, 32, 14, 20])
    """

    __constants__ = [
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "groups",
        "padding_mode",
        "init_max",
        "impl",
    ]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        init_max: float = 1.5,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = _positive_int("out_channels", out_channels)
        groups = _positive_int("groups", groups)
        kh, kw = _pair("kernel_size", kernel_size)
        if kh != kw or kh % 2 == 0:
            raise ValueError(
                f"kernel_size={kernel_size!r} must be odd and square (3, 5, 7, ...): the odd "
                "kernels need a centre tap"
            )
        if kh == 1:
            raise ValueError(
                f"kernel_size={kernel_size!r} has no twist terms (an odd 1x1 kernel is zero): "
                "use nn.Conv2d, or an odd kernel_size of 3 or more"
            )
        stride = _pair("stride", stride)
        _check_padding(padding, kh, stride)
        if _pair("dilation", dilation, _int) != (1, 1):
            raise ValueError(f"dilation={dilation!r} is not allowed; ConvTwist needs dilation 1")
        if in_channels % groups:
            raise ValueError(f"in_channels={in_channels} is not divisible by groups={groups}")
        if out_channels % groups:
            raise ValueError(f"out_channels={out_channels} is not divisible by groups={groups}")
        if not isinstance(bias, bool):
            raise TypeError(f"bias={bias!r} must be a bool")
        if isinstance(init_max, bool) or not isinstance(init_max, numbers.Real):
            raise TypeError(
                f"init_max={init_max!r} must be a number, got {type(init_max).__name__}"
            )
        if not math.isfinite(init_max) or init_max < 0:
            raise ValueError(f"init_max={init_max!r} must be a finite number >= 0")
        for name, value, allowed in (
            ("impl", impl, _IMPLS),
            ("padding_mode", padding_mode, _PADDING_MODES),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{name}={value!r} must be a str, one of {allowed}")
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not allowed; use one of {allowed}")
        factory = {"device": device, "dtype": dtype}

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kh, kh)
        self.stride = stride
        self.padding = (kh // 2, kh // 2)
        self.groups = groups
        self.padding_mode = padding_mode
        self.init_max = float(init_max)
        self.impl = impl

        n_free = (kh * kh - 1) // 2
        shape = (out_channels, in_channels // groups)
        self.weight = nn.Parameter(torch.empty(*shape, kh, kh, **factory))
        self.twist_x = nn.Parameter(torch.empty(*shape, n_free, **factory))
        self.twist_y = nn.Parameter(torch.empty(*shape, n_free, **factory))
        self.center_x = nn.Parameter(torch.empty(out_channels, **factory))
        self.center_y = nn.Parameter(torch.empty(out_channels, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        # (H_out, W_out, device, dtype) -> (X (W_out,), Y (H_out, 1)); plain tensors, not
        # buffers: derived data that must stay out of state_dict and DDP broadcasts.
        self._grids = OrderedDict()
        # path -> (parameter versions, kernels), filled only when no gradient is needed.
        self._kernel_cache = {}
        self.reset_parameters()

    def _spec(self) -> tuple:
        return tuple(
            _Spec(
                self.in_channels,
                self.out_channels,
                self.kernel_size[0],
                self.stride,
                self.groups,
                self.padding_mode,
                self.impl,
            )
        )

    # -- parameters ----------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Initialise as the post does: ``W`` and a kernel ``V`` like ``nn.Conv2d``'s,
        ``Wx = (V - V.flip(2, 3)) / 2``, ``Wy = Wx`` rotated by 90 degrees
        (``Wx.transpose(2, 3).flip(3)``, again odd), centres uniform in ``[-init_max,
        init_max]`` and the bias as ``nn.Conv2d``'s."""
        n_free = self.twist_x.shape[-1]
        with torch.no_grad():
            init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            full = torch.empty_like(self.weight)
            init.kaiming_uniform_(full, a=math.sqrt(5))
            wx = (full - full.flip(2, 3)) / 2
            wy = wx.transpose(2, 3).flip(3)
            self.twist_x.copy_(wx.flatten(2)[..., :n_free])
            self.twist_y.copy_(wy.flatten(2)[..., :n_free])
            init.uniform_(self.center_x, -self.init_max, self.init_max)
            init.uniform_(self.center_y, -self.init_max, self.init_max)
            if self.bias is not None:
                fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(self.bias, -bound, bound)

    @property
    def weight_x(self) -> Tensor:
        """The odd kernel ``Wx`` ``(out_channels, in_channels / groups, k, k)`` (differentiable)."""
        return _odd_kernel(self.twist_x, self.kernel_size[0])

    @property
    def weight_y(self) -> Tensor:
        """The odd kernel ``Wy`` ``(out_channels, in_channels / groups, k, k)`` (differentiable)."""
        return _odd_kernel(self.twist_y, self.kernel_size[0])

    def set_twist_kernels(self, weight_x: Tensor, weight_y: Tensor) -> None:
        """Set the odd kernels ``Wx`` and ``Wy`` (under ``no_grad``).

        Each argument is a tensor broadcastable to ``(out_channels, in_channels / groups,
        k, k)`` (a single ``(k, k)`` kernel sets every filter) and must be odd: centre 0 and
        ``K[..., k-1-i, k-1-j] == -K[..., i, j]`` up to rounding (``1e-6`` of the largest
        entry), and finite in the parameters' dtype. Raises ``ValueError`` otherwise (and
        ``TypeError`` for an argument that is not a tensor); nothing is set then.
        """
        shape = self.weight.shape
        n_free = self.twist_x.shape[-1]
        free = []
        for name, kernel in (("weight_x", weight_x), ("weight_y", weight_y)):
            if not isinstance(kernel, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(kernel).__name__}")
            try:
                kernel = torch.broadcast_to(kernel.detach(), shape)
            except RuntimeError:
                raise ValueError(
                    f"{name} of shape {tuple(kernel.shape)} does not broadcast to the kernel "
                    f"shape {tuple(shape)}"
                ) from None
            kernel = kernel.to(device=self.twist_x.device, dtype=self.twist_x.dtype)
            if not bool(torch.isfinite(kernel).all()):
                raise ValueError(
                    f"{name} has NaN or infinite entries (in {self.twist_x.dtype}); the twist "
                    "kernels must be finite"
                )
            scale = float(kernel.abs().max()) if kernel.numel() else 0.0
            defect = (kernel + kernel.flip(2, 3)).abs().amax() if kernel.numel() else 0.0
            if float(defect) > 1e-6 * scale:
                raise ValueError(
                    f"{name} is not odd: K(-d) must equal -K(d) and the centre tap must be 0 "
                    f"(largest violation {float(defect):.3g})"
                )
            free.append(((kernel - kernel.flip(2, 3)) / 2).flatten(2)[..., :n_free])
        with torch.no_grad():
            self.twist_x.copy_(free[0])
            self.twist_y.copy_(free[1])

    # -- forward -------------------------------------------------------------------------
    def forward(self, input: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` -> ``(N, out_channels, H_out, W_out)`` (and unbatched
        ``(in_channels, H, W)`` -> ``(out_channels, H_out, W_out)``)."""
        if isinstance(input, torch.fx.Proxy):
            # Symbolic tracing: one node that runs this forward on the traced parameters.
            return _conv_twist(input, *self._params(), self._spec())
        return self._forward(input)

    def clear_cache(self) -> None:
        """Drop the cached inference kernels (needed only after writes through ``.data``)."""
        self._kernel_cache.clear()

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this on every module before compiling it.
        raise RuntimeError(
            "ConvTwist does not support torch.jit.script (its forward chooses among paths "
            "TorchScript cannot compile); use torch.compile, torch.jit.trace or "
            "torch.export instead"
        )

    # -- conversion ----------------------------------------------------------------------
    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        init_max: float = 1.5,
        impl: str = "auto",
        copy_weights: bool = True,
    ) -> "ConvTwist":
        """A ``ConvTwist`` with ``conv``'s shape, stride, groups, bias and padding mode.

        With ``copy_weights`` (default) it computes the same function as ``conv``: ``W``
        (and the bias) copied, the twist taps zero, the centres drawn as usual; without,
        every parameter keeps its fresh initialisation.

        ``conv`` must be a plain ``nn.Conv2d`` with an odd square kernel, dilation 1 and
        padding ``k // 2`` (or ``'same'``); any stride, groups, bias and padding mode.
        """
        from symconv.nn.symmetric import SymmetricConvNd

        if not isinstance(conv, nn.Conv2d) or isinstance(conv, SymmetricConvNd):
            raise TypeError(
                f"ConvTwist.from_conv needs a plain nn.Conv2d, got {type(conv).__name__}"
            )
        k = conv.kernel_size
        if k[0] != k[1] or k[0] % 2 == 0:
            raise ValueError(f"kernel_size={k} is not odd and square")
        if tuple(conv.dilation) != (1, 1):
            raise ValueError(f"dilation={conv.dilation} is not supported; ConvTwist needs 1")
        if conv.padding != "same" and tuple(conv.padding) != (k[0] // 2, k[0] // 2):
            raise ValueError(
                f"padding={conv.padding} is not kernel_size // 2 = {k[0] // 2} (or 'same')"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            kernel_size=k[0],
            stride=conv.stride,
            groups=conv.groups,
            bias=conv.bias is not None,
            init_max=init_max,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            impl=impl,
        )
        if not copy_weights:
            return layer
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            layer.twist_x.zero_()
            layer.twist_y.zero_()
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.init_max != 1.5:
            s += f", init_max={self.init_max}"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        return s
