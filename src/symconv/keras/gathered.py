"""The base of the Keras convolutions whose kernel is one gather from free weights.

``SymmetricConv1D/2D/3D`` and ``GroupConv1D/2D/3D`` differ only in their spec (which
free filter and transform makes each output channel) and their family options
(``symmetry``/``share_bias`` or ``group``); this base holds everything else:
``keras.layers.ConvND``'s arguments, the weights, the differentiable expansion, ``call``,
``compute_output_shape``, ``to_conv``, ``from_spec`` and ``get_config``.

Shapes (``k`` the kernel size, ``c`` the conv groups)::

    kernel           (*k, in_channels / c, n_free)        the free kernel (a weight)
    bias             (n_bias,)                            free biases, if use_bias
    expanded_kernel  (*k, in_channels / c, filters)       what the convolution uses
    expanded_bias    (filters,)
    input            (batch, *spatial, in_channels)       channels_last (default)
                     (batch, in_channels, *spatial)       channels_first
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from symconv._lazy import ConstructorSignature
from symconv.core.row_gather import column_rows
from symconv.core.validate import type_error
from symconv.keras._common import (
    SymconvLayer,
    conv,
    conv_output_length,
    data_format_arg,
    gather,
    gather_columns,
    weight_options_config,
)

__all__ = ["GatheredConv"]


class GatheredConv(SymconvLayer):
    """``keras.layers.ConvND``'s arguments and computation over a gathered kernel.

    A family sets ``_spec_class`` and implements :meth:`_spec_from_keras` (the spec from
    the conv arguments and its options), :meth:`_indices` (the kernel and bias gather
    indices, ``None`` for "no gather"), :meth:`_representatives` (the full kernel's
    channels that are the free filters themselves) and :meth:`_family_config`.
    """

    rank: ClassVar[int]
    _plain_name: ClassVar[str]
    _spec_class: ClassVar[type]

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
        *extra: Any,
        family_options: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        """``keras.layers.ConvND``'s arguments, in its order, plus the family's keyword-only
        options (``symmetry``/``share_bias`` or ``group``)."""
        if extra:  # the family's options passed by position after keras' own
            raise TypeError(
                f"{type(self).__name__}() takes at most 16 positional arguments "
                f"(keras.layers.{self._plain_name}'s), got {16 + len(extra)}; pass "
                f"{' and '.join(family_options)} by keyword"
            )
        super().__init__(
            activation=activation,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        # The shared spec validates every argument: the same rules and messages as torch.
        conv_args = {
            "filters": filters,
            "kernel_size": kernel_size,
            "strides": strides,
            "padding": padding,
            "dilation_rate": dilation_rate,
            "groups": groups,
            "use_bias": use_bias,
        }
        self.spec = self._spec_from_keras(conv_args, **family_options)
        geometry = self.spec.conv
        self.filters = geometry.out_channels
        self.kernel_size = geometry.kernel_size
        self.strides = geometry.stride
        self.padding = geometry.padding
        self.dilation_rate = geometry.dilation
        self.groups = geometry.groups
        self.use_bias = geometry.bias
        self.data_format = data_format_arg(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)
        self._gather_index: np.ndarray | None = None
        self._gather_columns = False
        self._bias_index: np.ndarray | None = None

    # help() and inspect.signature(SymmetricConv2D) show keras.layers.ConvND's arguments
    # and the family's keywords, though the family's __init__ passes them on as *args.
    __signature__ = ConstructorSignature(__init__)

    # -- the family's part ---------------------------------------------------------------
    @classmethod
    def _spec_from_keras(cls, conv_args: dict[str, Any], **options: Any) -> Any:
        raise NotImplementedError

    def _indices(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Keras-layout gather indices of the kernel and the bias (``None``: no gather)."""
        raise NotImplementedError

    def _representatives(self) -> np.ndarray:
        """For each free filter, the output channel that is the free filter untransformed."""
        raise NotImplementedError

    def _family_config(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- weights -------------------------------------------------------------------------
    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_channels = self._input_channels(input_shape)
        self.spec = self.spec.with_in_channels(in_channels)
        self.input_spec = keras.layers.InputSpec(
            ndim=self.rank + 2, axes={self._channel_axis: in_channels}
        )
        kernel, bias = self.spec.params()
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel.keras_shape,
            initializer=self._free_kernel_initializer(),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=bias.keras_shape,
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
            )
        # Plain int arrays, not weights: derived from the spec, never saved. The kernel's
        # gather keeps one row index per member when each output channel reads one free
        # filter (group convolutions, single-key symmetric layers), else the full index.
        index, bias_index = self._indices()
        rows = None if index is None else column_rows(index, kernel.keras_shape[-1])
        self._gather_columns = rows is not None
        if rows is not None:
            index = rows.index
        self._gather_index = None if index is None else index.astype(np.int32)
        self._bias_index = None if bias_index is None else bias_index.astype(np.int32)

    def _free_kernel_initializer(self):  # type: ignore[no-untyped-def]
        """Draw a *full* kernel with ``kernel_initializer`` (so fans are the full kernel's,
        as in ``keras.layers.Conv``) and keep the channels that are the free filters
        untransformed: the expanded kernel then has a plain convolution's per-entry
        distribution."""
        full_shape = (*self.kernel_size, self.spec.conv.in_per_group, self.filters)
        representative = self._representatives().astype(np.int32)
        initializer = self.kernel_initializer

        def init(shape: tuple[int, ...], dtype: Any = None) -> Any:
            return ops.take(initializer(full_shape, dtype=dtype), representative, axis=-1)

        return init

    @property
    def expanded_kernel(self) -> Any:
        """The full kernel ``(*kernel_size, in_channels / groups, filters)`` (differentiable)."""
        if not self.built:
            raise ValueError(f"{type(self).__name__} is not built yet")
        if self._gather_index is None:
            return self.kernel
        if self._gather_columns:
            full_shape = (*self.kernel_size, self.spec.conv.in_per_group, self.filters)
            return gather_columns(self.kernel, self._gather_index, full_shape)
        return gather(self.kernel, self._gather_index)

    @property
    def expanded_bias(self) -> Any:
        """The full bias ``(filters,)``, or ``None`` without bias."""
        if self.bias is None or self._bias_index is None:
            return self.bias
        return gather(self.bias, self._bias_index)

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
    def _input_shape_for(self, in_channels: int) -> tuple[int | None, ...]:
        """A symbolic input shape with ``in_channels`` channels, for ``build``."""
        return self.spec.with_in_channels(in_channels).keras_input_shape(self.data_format)

    def to_conv(self) -> keras.layers.Layer:
        """A plain ``keras.layers.ConvND`` with the expanded kernel and bias: same outputs.

        (Except where Keras' own conv is wrong: on TensorFlow, ``channels_first`` with a
        spatial size equal to ``filters``, ``keras.ops.add`` puts its bias on the last axis.)
        """
        if not self.built:
            raise ValueError(f"{type(self).__name__}.to_conv needs a built layer")
        config = self.get_config()
        for name in self._family_config():
            config.pop(name)
        plain = getattr(keras.layers, self._plain_name).from_config(config)
        plain.build(self.spec.keras_input_shape(self.data_format))
        weights = [ops.convert_to_numpy(self.expanded_kernel)]
        if self.use_bias:
            weights.append(ops.convert_to_numpy(self.expanded_bias))
        plain.set_weights(weights)
        return plain

    @classmethod
    def _plain_source(cls, conv: keras.layers.Layer) -> tuple[dict[str, Any], int]:
        """The config of a built ``keras.layers.ConvND`` for ``from_conv`` (without what
        this layer does not take) and its input channels."""
        plain = getattr(keras.layers, cls._plain_name)
        if type(conv) is not plain:
            raise TypeError(
                f"{cls.__name__}.from_conv needs a keras.layers.{cls._plain_name}, got "
                f"{type(conv).__name__}"
            )
        if not conv.built:
            raise ValueError(f"{cls.__name__}.from_conv needs a built {cls._plain_name}")
        config = conv.get_config()
        for unused in ("lora_rank", "lora_alpha", "name"):
            config.pop(unused, None)
        return config, int(conv.kernel.shape[-2]) * conv.groups

    @classmethod
    def from_spec(cls, spec: Any, data_format: str = "channels_last", **kwargs: Any) -> Any:
        """The layer a spec of this family describes, built when the spec knows its input
        channels; ``kwargs`` are further Keras arguments (``activation``, initializers,
        ``name``, ...)."""
        if not isinstance(spec, cls._spec_class) or spec.conv.ndim != cls.rank:
            raise type_error("spec", spec, f"a {cls.rank}-D {cls._spec_class.__name__}")
        layer = cls(**spec.keras_kwargs(data_format), **kwargs)
        if spec.in_channels is not None:
            layer.build(spec.keras_input_shape(data_format))
        return layer

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self.spec.keras_kwargs(self.data_format))  # the family options too
        config.update(weight_options_config(self))
        return config
