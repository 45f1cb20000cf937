"""ConvTwist: a convolution that can learn to rotate and dilate, not only translate and blur.

A small convolution applied many times generates translations (Sobel-like kernels) and
blurring; it cannot generate rotations or scalings, whose generators depend on position.
``ConvTwist`` adds the two position-dependent terms (after Liu Yao's "Convolutional Layer
with a Twist")::

    out = conv(x, W) + (X - cx) * conv(x, Wx) + (Y - cy) * conv(x, Wy)  (+ bias)

* ``W`` is an ordinary kernel, ``Wx`` and ``Wy`` are *odd* kernels (``K(-d) = -K(d)``,
  center 0): discrete first-order derivative operators. With ``Wx ~ d/dx`` and
  ``Wy ~ d/dy`` the sum ``(X - cx) d/dx + (Y - cy) d/dy`` generates a scaling about
  ``(cx, cy)``; with ``Wx ~ -d/dy`` and ``Wy ~ d/dx`` it generates a rotation.
* ``X[j] = 2 j / W_out`` and ``Y[i] = 2 i / H_out`` are the column and row of the
  *output* pixel scaled to ``[0, 2)``; ``cx``, ``cy`` are learnable per output channel.
  The image center is at ``X = (W_out - 1) / W_out``, ``Y = (H_out - 1) / H_out``.
* Padding is ``kernel_size // 2`` on every side, so a stride-1 layer keeps the size.
* A 1x1 kernel has no twist terms (its odd kernels are zero), so ``kernel_size`` is 3 or more.

Implementation: the centers are folded into the plain kernel,
``conv(x, W) - cx conv(x, Wx) - cy conv(x, Wy) = conv(x, W - cx Wx - cy Wy)``, leaving
``a + X * b + Y * c`` with fixed grids as the tail (the ``'taps'`` path instead applies
``X - cx`` and ``Y - cy`` in its tail and takes the centers' gradients from ``W``'s);
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
layer as one call of ``conv_twist`` on its input and parameters, which runs the paths above.
``torch.jit.script`` is not supported and says so; ``torch.compile`` runs the chosen path.

The odd kernels are parametrized by their free taps only: ``twist_x`` and ``twist_y``
hold, for every ``(out, in / groups)`` pair, the ``(k * k - 1) / 2`` taps that precede
the center in row-major order; the taps after the center are their negatives in reverse
order and the center is zero. Optimizers, weight decay and DDP therefore act on the free
taps and the kernels stay exactly odd.

Where it lives: the argument rules and parameter layouts in :mod:`symconv.core.twist`
(:class:`~symconv.core.twist.TwistSpec`, shared with the Keras twin); the forward paths in
:mod:`symconv.nn._twist_forward`, the tap path in :mod:`symconv.nn._twist_taps`, the
exported form in :mod:`symconv.nn._twist_export`.
"""

# No postponed annotations here: torch.fx copies forward's annotations into a traced graph's
# code, and a string there breaks pickling the GraphModule.
import math
from collections import OrderedDict

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn import init

from symconv.core.twist import TwistSpec, conversion_reason
from symconv.nn._cache import not_scriptable
from symconv.nn._twist_forward import ForwardSettings, TwistForward, conv_twist
from symconv.nn._twist_kernels import odd_kernel

__all__ = ["ConvTwist"]

# forward records a ConvTwist as one call of conv_twist when torch.fx traces it symbolically.
torch.fx.wrap("conv_twist")


def _one_or_pair(value: object) -> object:
    """An ``nn.Conv2d`` setting as a user would write it: ``3`` for ``(3, 3)``."""
    if isinstance(value, tuple) and len(set(value)) == 1:
        return value[0]
    return value


class ConvTwist(TwistForward, nn.Module):
    r"""A 2-D convolution plus position-weighted odd convolutions that generate rotations and
    dilations about learnable centers.

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
        init_max: the centers start uniform in ``[-init_max, init_max]``.
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
        spec = TwistSpec.from_torch(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            init_max=init_max,
            impl=impl,
        )
        self.spec = spec
        k = spec.kernel_size
        self.in_channels = spec.in_channels
        self.out_channels = spec.out_channels
        self.kernel_size = (k, k)
        self.stride = spec.stride
        self.padding = (k // 2, k // 2)
        self.groups = spec.groups
        self.padding_mode = spec.padding_mode
        self.init_max = spec.init_max
        self.impl = spec.impl
        factory = {"device": device, "dtype": dtype}
        for layout in spec.params():  # weight, twist_x, twist_y, center_x, center_y, bias
            if layout.present:
                param = nn.Parameter(torch.empty(layout.torch_shape, **factory))
                setattr(self, layout.torch_name, param)
            else:
                self.register_parameter(layout.torch_name, None)
        # (H_out, W_out, device, dtype) -> (X (W_out,), Y (H_out, 1)); plain tensors, not
        # buffers: derived data that must stay out of state_dict and DDP broadcasts.
        self._grids = OrderedDict()
        # path -> (parameter versions, kernels), filled only when no gradient is needed.
        self._kernel_cache = {}
        self.reset_parameters()

    @classmethod
    def from_spec(
        cls,
        spec: TwistSpec,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> "ConvTwist":
        """A freshly initialized ``ConvTwist`` as ``spec`` describes (its input channels must
        be known: a Keras-made spec after its layer is built)."""
        if not isinstance(spec, TwistSpec):
            raise TypeError(f"spec={spec!r} must be a TwistSpec, got {type(spec).__name__}")
        return cls(**spec.torch_kwargs(), device=device, dtype=dtype)

    def _settings(self) -> tuple:
        """The :class:`ForwardSettings` of this layer as a plain tuple (for torch.fx)."""
        return tuple(
            ForwardSettings(
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
        """Initialize as the post does: ``W`` and a kernel ``V`` like ``nn.Conv2d``'s,
        ``Wx = (V - V.flip(2, 3)) / 2``, ``Wy = Wx`` rotated by 90 degrees
        (``Wx.transpose(2, 3).flip(3)``, again odd), centers uniform in ``[-init_max,
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
        return odd_kernel(self.twist_x, self.kernel_size[0])

    @property
    def weight_y(self) -> Tensor:
        """The odd kernel ``Wy`` ``(out_channels, in_channels / groups, k, k)`` (differentiable)."""
        return odd_kernel(self.twist_y, self.kernel_size[0])

    def set_twist_kernels(self, weight_x: Tensor, weight_y: Tensor) -> None:
        """Set the odd kernels ``Wx`` and ``Wy`` (under ``no_grad``).

        Each argument is a tensor broadcastable to ``(out_channels, in_channels / groups,
        k, k)`` (a single ``(k, k)`` kernel sets every filter) and must be odd: center 0 and
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
                    f"{name} is not odd: K(-d) must equal -K(d) and the center tap must be 0 "
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
            return conv_twist(input, *self._params(), self._settings())
        return self._forward(input)

    def clear_cache(self) -> None:
        """Drop the cached inference kernels (needed only after writes through ``.data``)."""
        self._kernel_cache.clear()

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this on every module before compiling it; the forward
        # chooses among paths TorchScript cannot compile.
        raise not_scriptable(self)

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
        (and the bias) copied, the twist taps zero, the centers drawn as usual; without,
        every parameter keeps its fresh initialization.

        ``conv`` must be a plain ``nn.Conv2d`` with an odd square kernel, dilation 1 and
        padding ``k // 2`` (or ``'same'``); any stride, groups, bias and padding mode.
        """
        from symconv.nn.symmetric import SymmetricConvNd

        if not isinstance(conv, nn.Conv2d) or isinstance(conv, SymmetricConvNd):
            raise TypeError(
                f"ConvTwist.from_conv needs a plain nn.Conv2d, got {type(conv).__name__}"
            )
        reason = conversion_reason(conv.kernel_size, conv.dilation, conv.padding)
        if reason is not None:
            given = ", ".join(
                f"{name}={_one_or_pair(getattr(conv, name))!r}"
                for name in ("kernel_size", "dilation", "padding")
            )
            raise ValueError(
                f"ConvTwist.from_conv: {reason} (the conv has {given}); it needs an odd square "
                "kernel of 3 or more, dilation 1 and padding kernel_size // 2 (or 'same')"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            kernel_size=conv.kernel_size[0],
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
