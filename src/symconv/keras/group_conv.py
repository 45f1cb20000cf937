"""Keras 3 group convolutions: ``GroupConv1D/2D/3D`` (p4, p4m and the reflection groups).

The Keras twins of :class:`symconv.GroupConv1d/2d/3d`, built from the same
:class:`~symconv.core.group_conv.GroupConvSpec`: the same groups and member order, the
same channel layout (fields of ``|G|`` channels, field-major and member-minor; with
``channels_last`` the channels are the last axis, in the same order), the same
validation messages. Built with ``keras.ops`` only (TensorFlow, PyTorch and JAX backends).

Shapes (``k`` the kernel size, ``c`` the conv groups, ``|G|`` the group order)::

    kernel           (*k, in_channels / c, filters / |G|)   free kernel (the only weight)
    bias             (filters / |G|,)                       one per output field
    expanded_kernel  (*k, in_channels / c, filters)         what the convolution uses
    input            (batch, *spatial, in_channels)         channels_last (default)
                     (batch, in_channels, *spatial)         channels_first
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from symconv.core.group_conv import GroupConvSpec, conversion_reason
from symconv.core.validate import type_error
from symconv.keras._common import (
    conv,
    conv_output_length,
    data_format_arg,
    gather,
    set_weight_options,
    weight_options_config,
)

__all__ = ["GroupConv1D", "GroupConv2D", "GroupConv3D"]


class _GroupConv(keras.layers.Layer):
    """Shared implementation of ``GroupConv1D/2D/3D``: ``keras.ops.conv`` with the kernel
    gathered from the free one by :meth:`GroupConvSpec.gather_index`."""

    rank: ClassVar[int]
    _plain_name: ClassVar[str]

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, ...],
        strides: int | tuple[int, ...] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, ...] = 1,
        groups: int = 1,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        *,
        group: str = "hr",
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.spec = GroupConvSpec.from_keras(
            self.rank,
            group=group,
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            groups=groups,
            use_bias=use_bias,
        )
        geometry = self.spec.conv
        self.filters = geometry.out_channels
        self.kernel_size = geometry.kernel_size
        self.strides = geometry.stride
        self.padding = geometry.padding
        self.dilation_rate = geometry.dilation
        self.groups = geometry.groups
        self.use_bias = geometry.bias
        self.data_format = data_format_arg(data_format)
        set_weight_options(
            self,
            activation=activation,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
        )
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)
        self._gather_index: np.ndarray | None = None
        self._bias_index = self.spec.bias_index().astype(np.int32)

    @property
    def group(self) -> str:
        """The group key (``'hr'``, ``'r'``, ``'hv'``, ...)."""
        return self.spec.group.key

    @property
    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def _input_shape_for(self, in_channels: int) -> tuple[int | None, ...]:
        return self.spec.with_in_channels(in_channels).keras_input_shape(self.data_format)

    # -- weights -------------------------------------------------------------------------
    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_channels = input_shape[self._channel_axis]
        if in_channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known channel dimension; got input shape "
                f"{tuple(input_shape)} with data_format={self.data_format!r}"
            )
        self.spec = self.spec.with_in_channels(int(in_channels))
        self.input_spec = keras.layers.InputSpec(
            ndim=self.rank + 2, axes={self._channel_axis: int(in_channels)}
        )
        free = self.spec.params()[0].keras_shape
        self.kernel = self.add_weight(
            name="kernel",
            shape=free,
            initializer=self._free_kernel_initializer(),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.spec.out_fields,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
            )
        # A plain int array, not a weight: derived from the spec, never saved.
        self._gather_index = self.spec.gather_index(layout="keras").astype(np.int32)

    def _free_kernel_initializer(self):  # type: ignore[no-untyped-def]
        """Draw a *full* kernel with ``kernel_initializer`` (fans of the full kernel, as in
        ``keras.layers.Conv``) and keep member ``e`` of each output field, whose full
        channel is the free kernel itself: the expanded kernel then has a plain
        convolution's per-entry distribution."""
        full_shape = (*self.kernel_size, self.spec.conv.in_per_group, self.filters)
        identity = np.arange(self.spec.out_fields, dtype=np.int32) * self.spec.group.order
        initializer = self.kernel_initializer

        def init(shape: tuple[int, ...], dtype: Any = None) -> Any:
            return ops.take(initializer(full_shape, dtype=dtype), identity, axis=-1)

        return init

    @property
    def expanded_kernel(self) -> Any:
        """The full kernel ``(*kernel_size, in_channels / groups, filters)`` (differentiable)."""
        if self._gather_index is None:
            raise ValueError(f"{type(self).__name__} is not built yet")
        return gather(self.kernel, self._gather_index)

    @property
    def expanded_bias(self) -> Any:
        """The full bias ``(filters,)`` (each field's bias on its ``|G|`` channels), or
        ``None`` without bias."""
        return None if self.bias is None else gather(self.bias, self._bias_index)

    # -- forward -------------------------------------------------------------------------
    def call(self, inputs: Any) -> Any:
        outputs = conv(
            inputs,
            self.expanded_kernel,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )
        if self.use_bias:
            shape = [1] * (self.rank + 2)
            shape[self._channel_axis] = self.filters
            # `+`, not keras.ops.add: on TensorFlow, ops.add turns a (1, C, 1) addend into
            # tf.nn.bias_add on the *last* axis whenever that axis also has size C.
            outputs = outputs + ops.reshape(self.expanded_bias, shape)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        first = self.data_format == "channels_first"
        spatial = input_shape[2:] if first else input_shape[1:-1]
        geometry = zip(spatial, self.kernel_size, self.strides, self.dilation_rate, strict=True)
        out = tuple(conv_output_length(n, k, s, d, self.padding) for n, k, s, d in geometry)
        if any(n is not None and n <= 0 for n in out):
            raise ValueError(
                f"input shape {tuple(input_shape)} is too small for kernel_size="
                f"{self.kernel_size} with dilation_rate={self.dilation_rate} and "
                f"padding={self.padding!r}"
            )
        if first:
            return (input_shape[0], self.filters, *out)
        return (input_shape[0], *out, self.filters)

    # -- conversion ----------------------------------------------------------------------
    def to_conv(self) -> keras.layers.Layer:
        """A plain ``keras.layers.ConvND`` with the expanded kernel and bias: same outputs."""
        if not self.built:
            raise ValueError(f"{type(self).__name__}.to_conv needs a built layer")
        config = self.get_config()
        config.pop("group")
        plain = getattr(keras.layers, self._plain_name).from_config(config)
        plain.build(self.spec.keras_input_shape(self.data_format))
        weights = [ops.convert_to_numpy(self.expanded_kernel)]
        if self.use_bias:
            weights.append(ops.convert_to_numpy(self.expanded_bias))
        plain.set_weights(weights)
        return plain

    @classmethod
    def from_conv(cls, conv: keras.layers.Layer, group: str = "hr") -> _GroupConv:
        """The group convolution closest to a built ``keras.layers.ConvND`` (its settings):
        each free entry is the mean of its ``|G|`` copies, each bias the mean over its
        field; a ``conv`` that already is a group convolution is reproduced exactly."""
        plain = getattr(keras.layers, cls._plain_name)
        if type(conv) is not plain:
            raise TypeError(
                f"{cls.__name__}.from_conv needs a keras.layers.{cls._plain_name}, got "
                f"{type(conv).__name__}"
            )
        if not conv.built:
            raise ValueError(f"{cls.__name__}.from_conv needs a built {cls._plain_name}")
        in_channels = int(conv.kernel.shape[-2]) * conv.groups
        reason = conversion_reason(
            cls.rank, in_channels, conv.filters, conv.kernel_size, conv.groups, group
        )
        if reason is not None:
            raise ValueError(f"cannot make a {cls.__name__} of {conv.name}: {reason}")
        config = conv.get_config()
        for unused in ("lora_rank", "lora_alpha", "name"):
            config.pop(unused, None)
        layer = cls(**config, group=group)
        layer.build(layer._input_shape_for(in_channels))
        layout = layer.spec.params()[0]
        full = np.transpose(ops.convert_to_numpy(conv.kernel), layout.to_torch)
        layer.kernel.assign(np.transpose(layer.spec.project(full), layout.to_keras))
        if conv.use_bias:
            bias = ops.convert_to_numpy(conv.bias).reshape(-1, layer.spec.group.order)
            layer.bias.assign(bias.mean(axis=1))
        return layer

    @classmethod
    def from_spec(
        cls, spec: GroupConvSpec, data_format: str = "channels_last", **kwargs: Any
    ) -> _GroupConv:
        """The layer a :class:`~symconv.core.group_conv.GroupConvSpec` describes, built
        when the spec knows its input channels; ``kwargs`` are further Keras arguments
        (``activation``, initializers, ``name``, ...)."""
        if not isinstance(spec, GroupConvSpec) or spec.conv.ndim != cls.rank:
            raise type_error("spec", spec, f"a {cls.rank}-D GroupConvSpec")
        layer = cls(**spec.keras_kwargs(data_format), **kwargs)
        if spec.in_channels is not None:
            layer.build(spec.keras_input_shape(data_format))
        return layer

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "groups": self.groups,
                "use_bias": self.use_bias,
                **weight_options_config(self),
                "group": self.group,
            }
        )
        return config


_DOC = """{rank}-D group convolution: fields of |G| channels in, fields out (Keras 3).

    The Keras twin of :class:`symconv.GroupConv{rank}d`; takes every argument of
    ``keras.layers.Conv{rank}D`` (except ``lora_rank``; ``filters`` and the input channels
    are multiples of ``|G|`` times ``groups``) plus ``group``: a key of
    :mod:`symconv.core.groups` ({keys}). Rotation keys need square kernels.

    Output member ``g`` of each field uses the free kernel transformed by ``g`` with its
    input-member axis permuted by ``g^-1`` (:mod:`symconv.core.group_conv`): one gather,
    then a plain convolution. Weights: ``kernel`` ``(*kernel_size, in_channels / groups,
    filters / |G|)`` and ``bias`` ``(filters / |G|,)``; ``expanded_kernel`` and
    ``expanded_bias`` are the full ones. Initialization: a full kernel is drawn with
    ``kernel_initializer`` (a plain convolution's fans) and each field keeps member ``e``.

    Shapes: input ``(batch, {sp}, channels)`` (``channels_last``) or
    ``(batch, channels, {sp})`` (``channels_first``); output likewise with ``filters``
    channels.

    Example::

        >>> layer = GroupConv{rank}D({filters}, 3, padding="same", group={key!r})
        >>> y = layer(keras.ops.ones((2, {example_in}, {cin})))
        >>> tuple(layer.kernel.shape), tuple(layer.expanded_kernel.shape)
        {example_out}
    """

#: Per rank: keys, spatial axes, example key, filters, input spatial shape, input
#: channels, (free, full) kernel shapes.
_DOC_ARGS = {
    1: ("'h'", "length", "h", 6, "10", 4, ((3, 4, 3), (3, 4, 6))),
    2: ("'h', 'v', 'hv', 'r', 'hr'", "height, width", "hr", 24, "10, 10", 16,
        ((3, 3, 16, 3), (3, 3, 16, 24))),
    3: ("'h', 'v', 'hv', 'z', 'hz', 'vz', 'hvz'", "depth, height, width", "hvz", 16, "6, 6, 6",
        8, ((3, 3, 3, 8, 2), (3, 3, 3, 8, 16))),
}  # fmt: skip


def _doc(rank: int) -> str:
    keys, spatial, key, filters, example_in, cin, example_out = _DOC_ARGS[rank]
    return _DOC.format(
        rank=rank, keys=keys, sp=spatial, key=key, filters=filters, example_in=example_in,
        cin=cin, example_out=example_out,
    )  # fmt: skip


@keras.saving.register_keras_serializable(package="symconv")
class GroupConv1D(_GroupConv):
    rank, _plain_name, __doc__ = 1, "Conv1D", _doc(1)


@keras.saving.register_keras_serializable(package="symconv")
class GroupConv2D(_GroupConv):
    rank, _plain_name, __doc__ = 2, "Conv2D", _doc(2)


@keras.saving.register_keras_serializable(package="symconv")
class GroupConv3D(_GroupConv):
    rank, _plain_name, __doc__ = 3, "Conv3D", _doc(3)
