"""The geometry of a convolution, checked once, in either framework's words.

:class:`ConvGeometry` holds what ``nn.ConvNd`` and ``keras.layers.ConvND`` both describe
(channels, kernel, stride, padding, dilation, groups, bias). It is made from torch-style
arguments (:meth:`ConvGeometry.from_torch`) or Keras-style ones
(:meth:`ConvGeometry.from_keras`); error messages name the argument as the user wrote it
(``out_channels`` or ``filters``, ``stride`` or ``strides``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from symconv.core.spec import LayerSpec, PairField
from symconv.core.validate import (
    check_bool,
    check_choice,
    check_divisible,
    check_int,
    check_padding,
    check_sizes,
    value_error,
)

if TYPE_CHECKING:
    from symconv.core.groups import Group

__all__ = ["PADDING_MODES", "ConvGeometry", "ConvSpec", "check_turnable", "same_padding"]

#: Keras' names of the grid arguments whose torch names differ.
_KERAS_NAMES = {"stride": "strides", "dilation": "dilation_rate"}


def check_turnable(
    grp: Group,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: str | tuple[int, ...],
    dilation: tuple[int, ...],
    keras: bool = False,
    what: str = "group",
) -> None:
    """Raise ``ValueError`` unless every member of ``grp`` maps the convolution's sampling
    grid onto itself: a square kernel for rotations, and, since a quarter turn swaps
    height and width, the same stride, dilation and padding on both (``keras``: name the
    arguments as Keras does; ``what``: the argument that chose the group, e.g.
    ``'symmetry key'``)."""
    if not grp.has_rotations:
        return
    grp.check_kernel(tuple(kernel_size), what=what)
    for name, value in (("stride", stride), ("dilation", dilation), ("padding", padding)):
        if not isinstance(value, str) and value[-2] != value[-1]:
            raise value_error(
                _KERAS_NAMES.get(name, name) if keras else name,
                value,
                f"the same on height and width for {what} {grp.key!r} (a quarter turn swaps them)",
            )


#: ``padding_mode`` values of ``nn.ConvNd``.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def same_padding(
    kernel_size: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The symmetric per-axis padding that equals Keras' ``'same'``, or ``None`` if none does
    (an even dilated extent or a stride: Keras then pads more on one side)."""
    axes = zip(kernel_size, stride, dilation, strict=True)
    if any(s != 1 or d * (k - 1) % 2 for k, s, d in axes):
        return None
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation, strict=True))


@dataclass(frozen=True)
class _NoKerasPadding:
    """A torch padding that no Keras padding computes, as mismatch messages show it."""

    padding: str | tuple[int, ...]
    padding_mode: str

    def __repr__(self) -> str:
        return (
            f"padding={self.padding} with padding_mode={self.padding_mode!r}, which no Keras "
            "padding computes"
        )


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's shape-defining arguments, validated and in canonical form.

    ``padding`` is ``'same'``, ``'valid'`` or a per-axis tuple; ``in_channels`` is
    ``None`` until known (a Keras layer learns it at build).
    """

    ndim: int
    in_channels: int | None
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    bias: bool
    padding_mode: str = "zeros"
    #: Made from Keras' arguments: later checks name them as Keras does.
    keras: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def from_torch(
        cls,
        ndim: int,
        in_channels: object,
        out_channels: object,
        kernel_size: object,
        stride: object = 1,
        padding: object = 0,
        dilation: object = 1,
        groups: object = 1,
        bias: object = True,
        padding_mode: object = "zeros",
    ) -> ConvGeometry:
        """From ``nn.ConvNd``'s arguments; rejects what ``nn.ConvNd`` would accept and then
        fail on (or silently mis-handle)."""
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = check_int("out_channels", out_channels, 1)
        kernel = check_sizes("kernel_size", kernel_size, ndim, 1)
        strides = check_sizes("stride", stride, ndim, 1)
        pad = check_padding("padding", padding, ndim)
        dilations = check_sizes("dilation", dilation, ndim, 1)
        groups = check_int("groups", groups, 1)
        check_divisible("in_channels", in_channels, "groups", groups)
        check_divisible("out_channels", out_channels, "groups", groups)
        return cls(
            ndim,
            in_channels,
            out_channels,
            kernel,
            strides,
            pad,
            dilations,
            groups,
            check_bool("bias", bias),
            check_choice("padding_mode", padding_mode, PADDING_MODES),
        )

    @classmethod
    def from_keras(
        cls,
        ndim: int,
        filters: object,
        kernel_size: object,
        strides: object = 1,
        padding: object = "valid",
        dilation_rate: object = 1,
        groups: object = 1,
        use_bias: object = True,
    ) -> ConvGeometry:
        """From ``keras.layers.ConvND``'s arguments (input channels unknown until build)."""
        filters = check_int("filters", filters, 1)
        kernel = check_sizes("kernel_size", kernel_size, ndim, 1)
        strides = check_sizes("strides", strides, ndim, 1)
        dilations = check_sizes("dilation_rate", dilation_rate, ndim, 1)
        if max(strides) > 1 and max(dilations) > 1:
            raise ValueError(
                f"strides={strides} and dilation_rate={dilations}: strides > 1 together with "
                "dilation_rate > 1 is not supported (as in keras.layers.Conv)"
            )
        pad = check_choice("padding", padding, ("valid", "same"), lower=True)
        groups = check_int("groups", groups, 1)
        check_divisible("filters", filters, "groups", groups)
        use_bias = check_bool("use_bias", use_bias)
        return cls(
            ndim, None, filters, kernel, strides, pad, dilations, groups, use_bias, keras=True
        )

    def check_turnable(self, grp: Group, what: str = "group") -> None:
        """:func:`check_turnable` for this convolution."""
        check_turnable(
            grp, self.kernel_size, self.stride, self.padding, self.dilation, self.keras, what
        )

    def with_in_channels(self, in_channels: int) -> ConvGeometry:
        """This geometry with ``in_channels`` set (checked against ``groups``)."""
        if in_channels % self.groups:
            raise ValueError(
                f"the input has {in_channels} channels, which is not divisible by "
                f"groups={self.groups}"
            )
        return replace(self, in_channels=int(in_channels))

    @property
    def in_per_group(self) -> int:
        if self.in_channels is None:
            raise ValueError("the input channels are not known yet (build the layer first)")
        return self.in_channels // self.groups

    def keras_padding(self) -> str | None:
        """The Keras padding that computes the same, or ``None`` if Keras has none."""
        if self.padding_mode != "zeros":
            return None
        if isinstance(self.padding, str):
            return self.padding
        if not any(self.padding):
            return "valid"
        same = same_padding(self.kernel_size, self.stride, self.dilation)
        return "same" if same == self.padding else None

    def pair_fields(self) -> tuple[PairField, ...]:
        """The settings twins share: channels, kernel, groups and bias always; stride,
        dilation and padding for ``strict`` checks."""
        return (
            PairField("in_channels", self.in_channels),
            PairField("out_channels / filters", self.out_channels),
            PairField("kernel_size", self.kernel_size),
            PairField("groups", self.groups),
            PairField("bias / use_bias", self.bias),
            PairField("stride / strides", self.stride, weights=False),
            PairField("dilation / dilation_rate", self.dilation, weights=False),
            PairField("padding (as Keras padding)", self._keras_padding_field(), weights=False),
        )

    def _keras_padding_field(self) -> str | _NoKerasPadding:
        padding = self.keras_padding()
        return _NoKerasPadding(self.padding, self.padding_mode) if padding is None else padding

    def torch_kwargs(self) -> dict[str, Any]:
        """``nn.ConvNd``'s constructor arguments (``padding`` as given)."""
        if self.in_channels is None:
            raise ValueError("the input channels are not known yet (build the layer first)")
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
            "bias": self.bias,
            "padding_mode": self.padding_mode,
        }

    def keras_kwargs(self, data_format: str = "channels_last") -> dict[str, Any]:
        """``keras.layers.ConvND``'s constructor arguments; ``ValueError`` when Keras has no
        padding that computes the same."""
        padding = self.keras_padding()
        if padding is None:
            raise ValueError(
                f"padding={self.padding!r} (padding_mode={self.padding_mode!r}) has no Keras "
                "equivalent: Keras offers 'valid' and 'same' with zero padding"
            )
        return {
            "filters": self.out_channels,
            "kernel_size": self.kernel_size,
            "strides": self.stride,
            "padding": padding,
            "data_format": data_format,
            "dilation_rate": self.dilation,
            "groups": self.groups,
            "use_bias": self.bias,
        }

    def torch_kwargs_from_keras(self) -> dict[str, Any]:
        """``torch_kwargs`` for a geometry made by :meth:`from_keras`: ``ValueError`` when
        torch has no equivalent of its padding."""
        if self.padding == "same" and max(self.stride) > 1:
            raise ValueError(
                f"padding='same' with strides={self.stride} has no torch equivalent (torch "
                "allows padding='same' only with stride 1)"
            )
        return self.torch_kwargs()


class ConvSpec(LayerSpec):
    """A spec whose layer is a convolution: a :class:`ConvGeometry` in ``conv`` plus the
    family's own options (:meth:`family_kwargs`). Subclasses are frozen dataclasses with a
    ``conv`` field."""

    conv: ConvGeometry

    def family_kwargs(self) -> dict[str, Any]:
        """The family's constructor options, the same in both frameworks."""
        raise NotImplementedError

    @property
    def in_channels(self) -> int | None:
        return self.conv.in_channels

    @property
    def spatial_rank(self) -> int:
        return self.conv.ndim

    def example_input_shape(self) -> tuple[int, ...]:
        return (2, self.conv.in_per_group * self.conv.groups, *(5,) * self.conv.ndim)

    def with_in_channels(self, in_channels: int) -> ConvSpec:
        return replace(self, conv=self.conv.with_in_channels(in_channels))  # type: ignore[type-var]

    def torch_kwargs(self) -> dict[str, Any]:
        return {**self.conv.torch_kwargs(), **self.family_kwargs()}

    def torch_kwargs_from_keras(self) -> dict[str, Any]:
        return {**self.conv.torch_kwargs_from_keras(), **self.family_kwargs()}

    def keras_kwargs(self, data_format: str = "channels_last") -> dict[str, Any]:
        return {**self.conv.keras_kwargs(data_format), **self.family_kwargs()}
