"""Keras 3 ``GlobalConv1D``: the permutation-equivariant set layer, twin of
:class:`symconv.GlobalConv1d`.

``y_i = act(x_i C + (sum_{j != i} x_j) S / d + b)`` over the positions ``i`` of a set,
``d = 1`` (``reduction='sum'``) or the number of other positions (``'mean'``), computed
in ``O(n)``. It is permutation-*equivariant* over ``n``, not invariant; pool over ``n``
for invariance. Arguments and weight layouts come from
:class:`symconv.core.global_conv.GlobalConvSpec`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from symconv.core.global_conv import GlobalConvSpec
from symconv.core.validate import check_choice, type_error
from symconv.keras._common import (
    SymconvLayer,
    independent_initializer,
    weight_options_config,
)

__all__ = ["GlobalConv1D"]


@keras.saving.register_keras_serializable(package="symconv")
class GlobalConv1D(SymconvLayer):
    r"""Permutation-equivariant set layer: each position against the sum of all others.

    .. math::
        y_i = \mathrm{act}\Big(x_i C + \frac{1}{d}\sum_{j \ne i} x_j S + b\Big)

    Args:
        filters: output features per position.
        reduction: ``'sum'`` (``d = 1``) or ``'mean'`` (``d = n - 1``, the number of
            other positions; with a mask, the number of other *valid* positions).
        activation: a Keras activation (name or callable) applied to the output.
        use_bias: add a learnable bias ``b``.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in
            ``keras.layers.Dense``; the kernel ones apply to both ``C`` and ``S``.

    Weights: ``center`` ``C`` and ``surround`` ``S`` of shape ``(channels, filters)``,
    ``bias`` ``(filters,)`` (the layout of the torch layer, so interop is a copy).

    Shapes: input ``(batch, n, channels)``, or ``(batch, n)`` read as one channel;
    output ``(batch, n, filters)``.

    Masking: the layer consumes and propagates a Keras mask ``(batch, n)`` (``True`` at
    valid positions, e.g. from ``keras.layers.Masking``), or takes ``mask=`` in the call.
    Masked positions neither enter the sums nor receive output: their output is exactly
    0 (after the activation). A position without other valid positions has an empty
    surround, which contributes 0 (for ``n = 1``, ``y_0 = act(x_0 C + b)``).
    """

    def __init__(
        self,
        filters: int,
        reduction: str = "sum",
        use_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = GlobalConvSpec.from_keras(filters, reduction, use_bias)
        self.filters = self.spec.out_channels
        self.reduction = self.spec.reduction
        self.use_bias = self.spec.bias
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(min_ndim=2, max_ndim=3)

    @classmethod
    def from_spec(
        cls, spec: GlobalConvSpec, data_format: str = "channels_last", **keras_kwargs: Any
    ) -> GlobalConv1D:
        """The layer ``spec`` describes, built when ``spec.in_channels`` is known.

        ``data_format`` is checked but changes nothing: a set is ``(batch, n, channels)``
        (the argument exists so that every family's ``from_spec`` takes it).
        ``keras_kwargs``: the weight options (``activation``, initializers, ...), ``name``.
        """
        if not isinstance(spec, GlobalConvSpec):
            raise type_error("spec", spec, "a GlobalConvSpec")
        check_choice("data_format", data_format, ("channels_last", "channels_first"))
        layer = cls(**spec.keras_kwargs(data_format), **keras_kwargs)
        if spec.in_channels is not None:
            layer.build(spec.keras_input_shape(data_format))
        return layer

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = 1 if len(input_shape) == 2 else input_shape[-1]
        if channels is None:
            raise ValueError(
                f"GlobalConv1D needs a known channel dimension; got input shape "
                f"{tuple(input_shape)}"
            )
        self.spec = self.spec.with_in_channels(channels)
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape), axes={-1: input_shape[-1]} if len(input_shape) == 3 else None
        )
        # Two independent draws: one Keras initializer object repeats its values.
        options = {
            "center": (self.kernel_initializer, "kernel"),
            "surround": (independent_initializer(self.kernel_initializer, 1), "kernel"),
            "bias": (self.bias_initializer, "bias"),
        }
        for layout in self.spec.params():
            initializer, role = options[layout.keras_name]
            weight = None
            if layout.present:
                weight = self.add_weight(
                    name=layout.keras_name,
                    shape=layout.keras_shape,
                    initializer=initializer,
                    regularizer=getattr(self, f"{role}_regularizer"),
                    constraint=getattr(self, f"{role}_constraint"),
                    trainable=True,
                )
            setattr(self, layout.keras_name, weight)

    def call(self, inputs: Any, mask: Any = None) -> Any:
        x = inputs
        if len(x.shape) == 2:
            x = ops.expand_dims(x, -1)
        keep = None
        if mask is not None:
            keep = ops.expand_dims(ops.cast(mask, "bool"), -1)  # (batch, n, 1)
            # `where`, not a product: padding may hold inf/NaN, which must not leak.
            x = ops.where(keep, x, ops.zeros_like(x))
        # Surround of every position: the total minus the position itself, O(n).
        surround = ops.sum(x, axis=1, keepdims=True) - x
        if self.reduction == "mean":
            if keep is None:
                others = ops.maximum(ops.cast(ops.shape(x)[1], x.dtype) - 1.0, 1.0)
            else:
                count = ops.sum(ops.cast(keep, x.dtype), axis=1, keepdims=True)
                others = ops.maximum(count - 1.0, 1.0)
            surround = surround / others
        outputs = ops.matmul(x, self.center) + ops.matmul(surround, self.surround)
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        if keep is not None:
            outputs = ops.where(keep, outputs, ops.zeros_like(outputs))
        return outputs

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return mask

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], input_shape[1], self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"filters": self.filters, "reduction": self.reduction, "use_bias": self.use_bias}
        )
        config.update(weight_options_config(self))
        return config
