"""The spec of the permutation-equivariant set layer (``GlobalConv1d`` and ``GlobalConv1D``).

``y_i = act(x_i C + (sum_{j != i} x_j) S / d + b)`` over the ``n`` positions of a set.
Parameters (the same ``(in, out)`` layout in both frameworks, so a copy needs no
transpose)::

    center   / center     (in_channels, out_channels)
    surround / surround   (in_channels, out_channels)
    bias     / bias       (out_channels,)   only with bias / use_bias

The activation is not part of the spec: torch takes any callable, Keras a Keras
activation, and :mod:`symconv.keras.interop` pairs the two.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from symconv.core.spec import LayerSpec, PairField, ParamLayout
from symconv.core.validate import check_bool, check_choice, check_int

__all__ = ["REDUCTIONS", "GlobalConvSpec", "check_reduction"]

#: ``reduction`` values: how the surround is scaled (``'mean'``: by the other positions).
REDUCTIONS = ("sum", "mean")


def check_reduction(reduction: object) -> str:
    """``reduction`` once it is one of :data:`REDUCTIONS`."""
    return check_choice("reduction", reduction, REDUCTIONS)


@dataclass(frozen=True)
class GlobalConvSpec(LayerSpec):
    """Channels, bias and reduction of a set layer; ``in_channels`` is ``None`` in a spec
    made for a Keras layer before it is built."""

    family: ClassVar[str] = "global_conv"

    in_channels: int | None
    out_channels: int
    bias: bool = True
    reduction: str = "sum"

    @classmethod
    def from_torch(
        cls,
        in_channels: object,
        out_channels: object,
        bias: object = True,
        reduction: object = "sum",
    ) -> GlobalConvSpec:
        """From ``GlobalConv1d``'s arguments."""
        return cls(
            check_int("in_channels", in_channels, 1),
            check_int("out_channels", out_channels, 1),
            check_bool("bias", bias),
            check_reduction(reduction),
        )

    @classmethod
    def from_keras(
        cls, filters: object, reduction: object = "sum", use_bias: object = True
    ) -> GlobalConvSpec:
        """From ``GlobalConv1D``'s arguments (input channels unknown until build)."""
        return cls(
            None,
            check_int("filters", filters, 1),
            check_bool("use_bias", use_bias),
            check_reduction(reduction),
        )

    @classmethod
    def example(cls, ndim: int | None = None) -> GlobalConvSpec:
        return cls.from_torch(3, 4, reduction="mean")

    @property
    def spatial_rank(self) -> int:
        return 1

    def example_input_shape(self) -> tuple[int, ...]:
        return (2, self.in_channels or 3, 6)

    def keras_input_shape(self, data_format: str = "channels_last") -> tuple[int | None, ...]:
        """``(None, None, in_channels)``: a set is ``(batch, n, channels)`` in Keras whatever
        the convolutions' ``data_format``."""
        return super().keras_input_shape("channels_last")

    def with_in_channels(self, in_channels: int) -> GlobalConvSpec:
        return replace(self, in_channels=check_int("in_channels", in_channels, 1))

    def params(self) -> tuple[ParamLayout, ...]:
        matrix = (self.in_channels, self.out_channels)
        return (
            ParamLayout("center", "center", matrix),  # type: ignore[arg-type]
            ParamLayout("surround", "surround", matrix),  # type: ignore[arg-type]
            ParamLayout("bias", "bias", (self.out_channels,), present=self.bias),
        )

    def pair_fields(self) -> tuple[PairField, ...]:
        return (
            PairField("in_channels", self.in_channels),
            PairField("out_channels / filters", self.out_channels),
            PairField("bias / use_bias", self.bias),
            PairField("reduction", self.reduction, weights=False),
        )

    def torch_kwargs(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "bias": self.bias,
            "reduction": self.reduction,
        }

    def torch_kwargs_from_keras(self) -> dict[str, Any]:
        if self.in_channels is None:
            raise ValueError("the input channels are not known yet (build the layer first)")
        return self.torch_kwargs()

    def keras_kwargs(self, data_format: str = "channels_last") -> dict[str, Any]:
        """``GlobalConv1D``'s arguments; it has no ``data_format`` (see
        :meth:`keras_input_shape`)."""
        return {"filters": self.out_channels, "reduction": self.reduction, "use_bias": self.bias}
