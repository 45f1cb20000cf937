"""Keras 3 ``GroupBatchNormalization``: batch normalization of group feature maps with one
mean, variance, scale and offset per field, shared by its ``|G|`` members (the twin of
:class:`symconv.nn.group_norm.GroupBatchNorm2d`), so training and inference stay exactly
equivariant."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from symconv.core.group_norm import GroupBatchNormSpec
from symconv.core.validate import check_int, type_error, value_error
from symconv.keras._common import gather

__all__ = ["GroupBatchNormalization"]

_OPTIONS = {  # argument -> the Keras module that deserializes it
    "beta_initializer": keras.initializers,
    "gamma_initializer": keras.initializers,
    "moving_mean_initializer": keras.initializers,
    "moving_variance_initializer": keras.initializers,
    "beta_regularizer": keras.regularizers,
    "gamma_regularizer": keras.regularizers,
    "beta_constraint": keras.constraints,
    "gamma_constraint": keras.constraints,
}


@keras.saving.register_keras_serializable(package="symconv")
class GroupBatchNormalization(keras.layers.Layer):
    """``keras.layers.BatchNormalization`` over fields of ``|G|`` channels.

    The members of a field are one feature seen in ``|G|`` poses, so they share one
    mean, one variance, one ``gamma`` and one ``beta``: the statistics of field ``f``
    are taken over the batch, the spatial axes and its ``|G|`` channels.

    Args:
        group: the key of the input's group (``'hr'``, ``'r'``, ``'hv'``, ...).
        axis: the channel axis, as in ``keras.layers.BatchNormalization``: ``-1`` for
            ``channels_last`` inputs (default), ``1`` for ``channels_first``.
        momentum, epsilon, center, scale, initializers, regularizers, constraints: as in
            ``keras.layers.BatchNormalization`` (the moving variance is the biased batch
            variance, as there; torch's running variance is the unbiased one).

    Weights (``F = channels / |G|``): ``gamma``, ``beta`` (trainable), ``moving_mean``,
    ``moving_variance`` (not trainable), each ``(F,)``.

    Shapes: input ``(batch, *spatial, F * |G|)`` (``axis=-1``) or
    ``(batch, F * |G|, *spatial)`` (``axis=1``); the output has the input's shape.
    """

    def __init__(
        self,
        group: str = "hr",
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = GroupBatchNormSpec.from_keras(group, momentum, epsilon, center, scale)
        # As given: the spec keeps torch's 1 - momentum, which need not round-trip exactly.
        self.momentum = float(momentum)
        self.axis = check_int("axis", axis)
        options = {
            "beta_initializer": beta_initializer,
            "gamma_initializer": gamma_initializer,
            "moving_mean_initializer": moving_mean_initializer,
            "moving_variance_initializer": moving_variance_initializer,
            "beta_regularizer": beta_regularizer,
            "gamma_regularizer": gamma_regularizer,
            "beta_constraint": beta_constraint,
            "gamma_constraint": gamma_constraint,
        }
        for name, value in options.items():
            setattr(self, name, _OPTIONS[name].get(value))
        self.supports_masking = False
        self.gamma = self.beta = None

    @classmethod
    def from_spec(
        cls, spec: GroupBatchNormSpec, data_format: str = "channels_last", **keras_kwargs: Any
    ) -> GroupBatchNormalization:
        """The layer ``spec`` describes (built when the spec knows its input), channels on
        the last axis or, with ``data_format='channels_first'``, on axis 1;
        ``keras_kwargs``: e.g. ``name`` or the initializers."""
        if not isinstance(spec, GroupBatchNormSpec):
            raise type_error("spec", spec, "a GroupBatchNormSpec")
        layer = cls(**spec.keras_kwargs(data_format), **keras_kwargs)
        if spec.channels is not None and spec.ndim is not None:
            layer.build(spec.keras_input_shape(data_format))
        return layer

    @property
    def group(self) -> str:
        """The group key (``'hr'``, ``'r'``, ``'hv'``, ...)."""
        return self.spec.group.key

    @property
    def epsilon(self) -> float:
        return self.spec.eps

    @property
    def center(self) -> bool:
        return self.spec.center

    @property
    def scale(self) -> bool:
        return self.spec.scale

    @property
    def order(self) -> int:
        """``|G|``: channels per field."""
        return self.spec.group.order

    @property
    def data_format(self) -> str:
        """``'channels_first'`` when the channel axis is 1, ``'channels_last'`` when it is
        the last (the layout :func:`symconv.keras.torch_to_keras` builds the layer for).
        Negative axes other than ``-1`` are known only once built."""
        rank = self.input_spec.ndim if self.built and self.input_spec is not None else None
        axis = self.axis % rank if rank is not None else self.axis
        if axis == 1:
            return "channels_first"
        if self.axis == -1 or (rank is not None and axis == rank - 1):
            return "channels_last"
        raise ValueError(
            f"axis={self.axis} is neither 1 (channels_first) nor -1 (channels_last)"
            + ("" if self.built else " before the layer is built: build it on an input first")
        )

    def _axis(self, rank: int) -> int:
        if not -rank <= self.axis < rank:
            raise value_error("axis", self.axis, f"an axis of a rank-{rank} input")
        return self.axis % rank

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        axis = self._axis(len(input_shape))
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"GroupBatchNormalization needs a known channel dimension; got input shape "
                f"{tuple(input_shape)} with axis={self.axis}"
            )
        if not 3 <= len(input_shape) <= 5:
            raise ValueError(
                f"GroupBatchNormalization needs an input with 1 to 3 spatial axes (rank 3 "
                f"to 5), got input shape {tuple(input_shape)}"
            )
        self.spec = self.spec.with_input(len(input_shape) - 2, int(channels))
        fields = self.spec.fields
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={axis: channels})
        shape = (fields,)
        for name in ("gamma", "beta"):
            if getattr(self, "scale" if name == "gamma" else "center"):
                weight = self.add_weight(
                    shape=shape,
                    name=name,
                    initializer=getattr(self, f"{name}_initializer"),
                    regularizer=getattr(self, f"{name}_regularizer"),
                    constraint=getattr(self, f"{name}_constraint"),
                    trainable=True,
                    autocast=False,
                )
                setattr(self, name, weight)
        for name in ("moving_mean", "moving_variance"):
            weight = self.add_weight(
                shape=shape,
                name=name,
                initializer=getattr(self, f"{name}_initializer"),
                trainable=False,
                autocast=False,
            )
            setattr(self, name, weight)
        # Channel c uses field c // |G|'s statistics: a gather index, never saved.
        self._field_index = np.arange(int(channels), dtype=np.int32) // self.order
        self._reduction_axes = [a for a in range(len(input_shape)) if a != axis]

    def _field_moments(self, inputs: Any) -> tuple[Any, Any]:
        """Per-field batch mean and (biased) variance ``(F,)``: per-channel moments, then
        the law of total variance over each field's equally sized member channels."""
        mean, variance = ops.moments(inputs, axes=self._reduction_axes)
        by_field = (-1, self.order)
        # Sums, not keras.ops.mean: on the torch backend that averages float64 in float32.
        field_mean = ops.sum(ops.reshape(mean, by_field), axis=1) / self.order
        spread = ops.reshape(mean, by_field) - ops.expand_dims(field_mean, 1)
        total = ops.reshape(variance, by_field) + ops.square(spread)
        return field_mean, ops.sum(total, axis=1) / self.order

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        # float16/bfloat16 inputs are normalized in float32, where their statistics do not
        # overflow (as in keras.layers.BatchNormalization), float64 ones in float64
        # (keras.backend.result_type(float64, "float32") is float32 on the torch backend).
        wide = keras.backend.standardize_dtype(inputs.dtype) == "float64"
        compute_dtype = "float64" if wide else "float32"
        inputs = ops.cast(inputs, compute_dtype)
        moving_mean = ops.cast(self.moving_mean, compute_dtype)
        moving_variance = ops.cast(self.moving_variance, compute_dtype)
        # An empty batch has no statistics: it leaves the moving ones as they are, as
        # torch's batch norm does (its mean would be NaN).
        if training and self.trainable and 0 not in tuple(inputs.shape):
            mean, variance = self._field_moments(inputs)
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            mean, variance = moving_mean, moving_variance

        def per_channel(values: Any) -> Any:
            if values is None:
                return None
            return gather(ops.cast(values, compute_dtype), self._field_index)

        outputs = ops.batch_normalization(
            inputs,
            mean=per_channel(mean),
            variance=per_channel(variance),
            axis=self._axis(len(inputs.shape)),
            offset=per_channel(self.beta),
            scale=per_channel(self.gamma),
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        self._axis(len(input_shape))
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "group": self.group,
                "axis": self.axis,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                **{name: mod.serialize(getattr(self, name)) for name, mod in _OPTIONS.items()},
            }
        )
        return config
