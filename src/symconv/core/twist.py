"""The spec of a ConvTwist layer (``symconv.ConvTwist`` and ``symconv.keras.ConvTwist2D``).

Every rule the two twins share lives here once: an odd square kernel of size 3 or more, the
padding the layer accepts (it always pads ``kernel_size // 2``), dilation 1, ``init_max``,
``impl`` and the padding modes, and which ``nn.Conv2d`` can become a ConvTwist
(:func:`conversion_reason`).

Parameters (``k`` the kernel size, ``g`` the groups, ``m = (k * k - 1) / 2``)::

    weight / kernel      torch (out, in/g, k, k)   Keras (k, k, in/g, out)
    twist_x, twist_y     torch (out, in/g, m)      Keras (m, in/g, out)
    center_x, center_y   (out,)
    bias                 (out,), only with bias / use_bias
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from symconv.core.conv import PADDING_MODES
from symconv.core.spec import LayerSpec, PairField, ParamLayout, kernel_to_keras
from symconv.core.validate import (
    check_bool,
    check_choice,
    check_divisible,
    check_int,
    check_real,
    check_sizes,
    value_error,
)

__all__ = [
    "IMPLS",
    "KERAS_PADDING_MODES",
    "TORCH_PADDING_MODES",
    "TwistSpec",
    "conversion_reason",
]

#: ``impl`` values of the torch layer (see :mod:`symconv.nn.twist`).
IMPLS = ("auto", "stacked", "split", "taps")
#: ``padding_mode`` values of the torch layer: those of ``nn.Conv2d``.
TORCH_PADDING_MODES = PADDING_MODES
#: ``padding_mode`` values of the Keras layer: the modes every backend's ``ops.pad`` has.
KERAS_PADDING_MODES = ("zeros", "reflect")


def conversion_reason(
    kernel_size: tuple[int, int], dilation: tuple[int, int], padding: str | tuple[int, int]
) -> str | None:
    """Why an ``nn.Conv2d`` with these arguments cannot become a ConvTwist computing the same
    function, or ``None`` if it can (``convert`` and ``ConvTwist.from_conv`` share it)."""
    k = tuple(kernel_size)
    if k[0] != k[1] or k[0] % 2 == 0:
        return f"kernel_size={kernel_size} is not odd and square"
    if k[0] == 1:
        return "1x1 kernel: the odd twist kernels would be identically zero"
    if tuple(dilation) != (1, 1):
        return f"dilation={dilation} (ConvTwist needs 1)"
    if padding != "same" and tuple(padding) != (k[0] // 2,) * 2:
        return f"padding={padding} is not kernel_size // 2 = {k[0] // 2}"
    return None


def _kernel_size(value: object, plain_conv: str) -> int:
    """The odd square kernel size ``k >= 3`` from an int or a pair; ``plain_conv`` names the
    framework's plain convolution, which a 1x1 kernel should use instead."""
    kh, kw = check_sizes("kernel_size", value, 2, 1)
    if kh != kw or kh % 2 == 0:
        raise value_error(
            "kernel_size",
            value,
            "odd and square (3, 5, 7, ...): the odd kernels need a center tap",
        )
    if kh == 1:
        raise value_error(
            "kernel_size",
            value,
            f"3 or more: a 1x1 kernel has no twist terms (its odd kernels are zero), so use "
            f"{plain_conv}",
        )
    return kh


def _check_padding(padding: object, k: int, stride: tuple[int, int]) -> None:
    """``padding`` must be what ConvTwist does anyway: ``None``, ``k // 2`` (an int or a
    pair) or ``'same'`` (at stride 1, as ``nn.Conv2d`` allows it)."""
    if padding is None:
        return
    half = k // 2
    allowed = (
        f"kernel_size // 2 = {half}, which ConvTwist pads on every side: pass padding={half}, "
        "'same' (stride 1) or nothing"
    )
    if isinstance(padding, str):
        if padding != "same":
            raise value_error("padding", padding, allowed)
        if stride != (1, 1):
            raise ValueError(
                f"padding='same' is not supported for strided convolutions (stride={stride}), "
                f"as in nn.Conv2d; {allowed}"
            )
        return
    try:
        pads = check_sizes("padding", padding, 2, 0)
    except ValueError:
        raise value_error("padding", padding, allowed) from None
    if pads != (half, half):
        raise value_error("padding", padding, allowed)


@dataclass(frozen=True)
class TwistSpec(LayerSpec):
    """A ConvTwist's settings, validated and in canonical form.

    ``kernel_size`` is the odd size ``k`` of the square kernels; ``in_channels`` is ``None``
    in a spec made for a Keras layer before it is built. ``impl`` is the torch layer's
    choice of path (a Keras-made spec has ``'auto'``).
    """

    family: ClassVar[str] = "twist"

    in_channels: int | None
    out_channels: int
    kernel_size: int
    stride: tuple[int, int]
    groups: int
    bias: bool
    padding_mode: str
    init_max: float
    impl: str = "auto"

    @classmethod
    def from_torch(
        cls,
        in_channels: object,
        out_channels: object,
        kernel_size: object = 3,
        stride: object = 1,
        padding: object = None,
        dilation: object = 1,
        groups: object = 1,
        bias: object = True,
        padding_mode: object = "zeros",
        *,
        init_max: object = 1.5,
        impl: object = "auto",
    ) -> TwistSpec:
        """From :class:`~symconv.nn.twist.ConvTwist`'s arguments (those of ``nn.Conv2d``
        plus ``init_max`` and ``impl``)."""
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = check_int("out_channels", out_channels, 1)
        groups = check_int("groups", groups, 1)
        k = _kernel_size(kernel_size, "nn.Conv2d")
        strides = check_sizes("stride", stride, 2, 1)
        _check_padding(padding, k, strides)
        if check_sizes("dilation", dilation, 2, 1) != (1, 1):
            raise value_error("dilation", dilation, "1 (ConvTwist needs dilation 1)")
        check_divisible("in_channels", in_channels, "groups", groups)
        check_divisible("out_channels", out_channels, "groups", groups)
        return cls(
            in_channels,
            out_channels,
            k,
            strides,
            groups,
            check_bool("bias", bias),
            check_choice("padding_mode", padding_mode, TORCH_PADDING_MODES),
            check_real("init_max", init_max, 0),
            check_choice("impl", impl, IMPLS),
        )

    @classmethod
    def from_keras(
        cls,
        filters: object,
        kernel_size: object = 3,
        strides: object = 1,
        groups: object = 1,
        use_bias: object = True,
        init_max: object = 1.5,
        padding_mode: object = "zeros",
    ) -> TwistSpec:
        """From :class:`~symconv.keras.twist.ConvTwist2D`'s arguments (input channels unknown
        until build)."""
        filters = check_int("filters", filters, 1)
        k = _kernel_size(kernel_size, "keras.layers.Conv2D")
        strides = check_sizes("strides", strides, 2, 1)
        groups = check_int("groups", groups, 1)
        check_divisible("filters", filters, "groups", groups)
        return cls(
            None,
            filters,
            k,
            strides,
            groups,
            check_bool("use_bias", use_bias),
            check_choice("padding_mode", padding_mode, KERAS_PADDING_MODES),
            check_real("init_max", init_max, 0),
        )

    @classmethod
    def example(cls, ndim: int | None = None) -> TwistSpec:
        return cls.from_torch(4, 6, 3, stride=1, groups=2)

    @property
    def spatial_rank(self) -> int:
        return 2

    @property
    def n_free(self) -> int:
        """The free taps of each odd kernel: ``(k * k - 1) / 2``."""
        return (self.kernel_size**2 - 1) // 2

    def example_input_shape(self) -> tuple[int, ...]:
        return (2, self.in_channels or 4, 9, 7)

    def with_in_channels(self, in_channels: int) -> TwistSpec:
        if in_channels % self.groups:
            raise ValueError(
                f"the input has {in_channels} channels, which is not divisible by "
                f"groups={self.groups}"
            )
        return replace(self, in_channels=int(in_channels))

    def _known_in_channels(self) -> int:
        if self.in_channels is None:
            raise ValueError("the input channels are not known yet (build the layer first)")
        return self.in_channels

    def params(self) -> tuple[ParamLayout, ...]:
        out, k = self.out_channels, self.kernel_size
        taps = (out, self._known_in_channels() // self.groups, self.n_free)
        return (
            ParamLayout("weight", "kernel", (*taps[:2], k, k), kernel_to_keras(2)),
            ParamLayout("twist_x", "twist_x", taps, (2, 1, 0)),
            ParamLayout("twist_y", "twist_y", taps, (2, 1, 0)),
            ParamLayout("center_x", "center_x", (out,)),
            ParamLayout("center_y", "center_y", (out,)),
            ParamLayout("bias", "bias", (out,), present=self.bias),
        )

    def pair_fields(self) -> tuple[PairField, ...]:
        return (
            PairField("in_channels", self.in_channels),
            PairField("out_channels / filters", self.out_channels),
            PairField("kernel_size", (self.kernel_size, self.kernel_size)),
            PairField("groups", self.groups),
            PairField("bias / use_bias", self.bias),
            PairField("stride / strides", self.stride, weights=False),
            PairField("padding_mode", self.padding_mode, weights=False),
        )

    def torch_kwargs(self) -> dict[str, Any]:
        """:class:`~symconv.nn.twist.ConvTwist`'s constructor arguments."""
        return {
            "in_channels": self._known_in_channels(),
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "groups": self.groups,
            "bias": self.bias,
            "padding_mode": self.padding_mode,
            "init_max": self.init_max,
            "impl": self.impl,
        }

    def torch_kwargs_from_keras(self) -> dict[str, Any]:
        """Every Keras ConvTwist2D has a torch twin: its padding modes are torch's too."""
        return self.torch_kwargs()

    def keras_kwargs(self, data_format: str = "channels_last") -> dict[str, Any]:
        """:class:`~symconv.keras.twist.ConvTwist2D`'s constructor arguments; ``ValueError``
        for a padding mode the Keras layer does not have."""
        if self.padding_mode not in KERAS_PADDING_MODES:
            raise ValueError(
                f"padding_mode={self.padding_mode!r} has no ConvTwist2D equivalent; it supports "
                f"{KERAS_PADDING_MODES}"
            )
        return {
            "filters": self.out_channels,
            "kernel_size": (self.kernel_size, self.kernel_size),
            "strides": self.stride,
            "groups": self.groups,
            "use_bias": self.bias,
            "init_max": self.init_max,
            "padding_mode": self.padding_mode,
            "data_format": data_format,
        }
