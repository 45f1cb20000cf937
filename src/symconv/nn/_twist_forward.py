"""ConvTwist's forward computation (:class:`TwistForward`), shared by the module and by
:func:`conv_twist`, the form ``torch.fx`` records.

Three paths compute the same function (``impl``); ``'auto'`` picks one per device and shape
(``TwistForward._path``). Graphs made to be kept take :func:`export_forward` instead.
"""

import contextlib
import warnings
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from symconv.nn._cache import caching_allowed, tracing, version_key
from symconv.nn._inputs import check_tensor
from symconv.nn._twist_export import export_forward
from symconv.nn._twist_kernels import (
    autocast_enabled,
    exporting,
    make_grid,
    odd_expansion,
    odd_kernel,
)
from symconv.nn._twist_taps import Geometry, odd_tap_twist

__all__ = ["ForwardSettings", "FunctionalTwist", "TwistForward", "conv_twist"]

_GRID_CACHE_SIZE = 16
# impl='auto' on CPU, set by benchmarks/bench_twist.py (one thread, training steps; figures in
# benchmarks/README.md): the tap path from this many input channels per group (its GEMM needs
# a wide reduction to pay for the differences); one stacked convolution up to
# _STACKED_MAX_CHANNELS_CPU input channels without groups; three convolutions otherwise.
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


class ForwardSettings(NamedTuple):
    """What a ConvTwist's forward needs besides its parameters (plain values, so a traced
    graph can hold them)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: tuple[int, int]
    groups: int
    padding_mode: str
    impl: str


class TwistForward:
    """ConvTwist's forward computation, reading only the attributes listed below: shared by
    the module and by :func:`conv_twist`, the form ``torch.fx`` records.

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
            return make_grid(h, w, device, dtype)
        key = (h, w, device, dtype)
        grids = self._grids.get(key)
        if grids is None:
            grids = make_grid(h, w, device, dtype)
            self._grids[key] = grids
            if len(self._grids) > _GRID_CACHE_SIZE:
                self._grids.popitem(last=False)
        return grids

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
            odd_expansion(k, t),
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
        odd = odd_kernel(torch.stack(self._free_taps(), dim=1), self.kernel_size[0])
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
        holds the parameters' identity, storage and version counter, so optimizer steps,
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
                    odd_kernel(self.twist_x, k),
                    odd_kernel(self.twist_y, k),
                )
            else:  # taps: (2 out, m * in/g, 1, 1), rows (group, x or y, out / g), columns
                # (tap, in / g); one copy writes the transposed taps contiguous (canonical
                # strides: a 1x1 kernel whose strides also read as channels-last can get a
                # wrong weight gradient from a channels-last convolution in float64 with
                # in/groups == 1, in PyTorch's CPU kernels). The centers stay out of the main
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
            # stacked: the fastest path on CUDA at every shape benchmarks/bench_twist.py
            # measured (figures in benchmarks/README.md)
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
        check_tensor(input, "ConvTwist")
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
            and autocast_enabled(input.device.type)
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
        if exporting():
            return export_forward(self, x, pad)
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
        if x.dtype in _AUTOCAST_DTYPES and autocast_enabled(x.device.type):
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
        centers = (self.center_x, self.center_y)
        return odd_tap_twist(x, w0, bias, w1, centers, (gx, gy), geo)

    def _tail(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """``a + X * b + Y * c`` on ``(N, g, out / g, H_out, W_out)`` views."""
        n, g, opg, h, w = a.shape
        gx, gy = self._grid(h, w, a.device, a.dtype)
        # Multiplying by constant grids saves nothing of output size for backward.
        out = torch.addcmul(torch.addcmul(a, b, gx), c, gy)
        return out.reshape(n, g * opg, h, w)


def conv_twist(
    input: Tensor,
    weight: Tensor,
    twist_x: Tensor,
    twist_y: Tensor,
    center_x: Tensor,
    center_y: Tensor,
    bias: Tensor | None,
    settings: tuple,
) -> Tensor:
    """A ConvTwist's forward as one function of its input, parameters and settings (the
    fields of :class:`ForwardSettings`): what ``torch.fx.symbolic_trace`` records for the layer
    (one node, so no control flow runs on proxies; the checks and the path choice run when
    the graph runs)."""
    params = (weight, twist_x, twist_y, center_x, center_y, bias)
    return FunctionalTwist(params, settings)._forward(input)


class FunctionalTwist(TwistForward):
    """The forward's state rebuilt from parameters and settings (per call: fresh caches)."""

    def __init__(self, params: tuple[Tensor | None, ...], settings: tuple) -> None:
        self.weight, self.twist_x, self.twist_y, self.center_x, self.center_y, self.bias = params
        spec = ForwardSettings(*settings)
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        k = spec.kernel_size
        self.kernel_size, self.padding = (k, k), (k // 2, k // 2)
        self.stride, self.groups = tuple(spec.stride), spec.groups
        self.padding_mode, self.impl = spec.padding_mode, spec.impl
        self._grids = OrderedDict()
        self._kernel_cache = {}
