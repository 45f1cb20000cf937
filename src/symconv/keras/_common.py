"""What the Keras layers share (no keras.src imports): ``data_format``, shape arithmetic,
the two backend-sensitive ops (convolution and gather), the Conv2D-style weight options
and the :class:`SymconvLayer` base."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from symconv.core.validate import check_choice

_DATA_FORMATS = ("channels_last", "channels_first")


def data_format_arg(data_format: object) -> str:
    """``data_format`` checked, lower-cased; ``None``: Keras' configured default."""
    if data_format is None:
        return keras.config.image_data_format()
    return check_choice("data_format", data_format, _DATA_FORMATS, lower=True)


def conv_output_length(
    length: int | None, kernel: int, stride: int, dilation: int, padding: str
) -> int | None:
    """Output length of a convolution along one axis (``None`` stays ``None``)."""
    if length is None:
        return None
    if padding == "same":
        return (length + stride - 1) // stride
    return (length - dilation * (kernel - 1) - 1) // stride + 1


def independent_initializer(initializer: Any, offset: int) -> Any:
    """A copy of a Keras initializer whose draws are independent of the original's.

    Keras 3 random initializers seeded with an int *or unseeded* return the same values on
    every call, so one initializer object must not fill two weights: the copy gets
    ``seed + offset`` (an int seed, still deterministic) or a fresh default seed
    (unseeded). Initializers seeded with a ``SeedGenerator`` already differ per call, and
    non-random ones need no copy: they are returned as they are.
    """
    get_config = getattr(initializer, "get_config", None)
    if get_config is None:
        return initializer
    config = dict(get_config())
    if "seed" not in config:
        return initializer
    seed = config["seed"]
    if isinstance(seed, int) and not isinstance(seed, bool):
        config["seed"] = seed + offset
    elif seed is not None:
        return initializer
    return type(initializer).from_config(config)


def conv(
    inputs: Any,
    kernel: Any,
    *,
    strides: tuple[int, ...],
    padding: str,
    data_format: str,
    dilation_rate: tuple[int, ...] | int = 1,
) -> Any:
    """``keras.ops.conv`` that works with ``channels_first`` on every backend and device.

    TensorFlow has no ``channels_first`` (NCHW) convolution on a CPU unless its oneDNN
    kernels are on, which TensorFlow decides per CPU at import (``TF_ENABLE_ONEDNN_OPTS``);
    and which device runs an op is not known when Keras traces a graph. So on TensorFlow a
    ``channels_first`` input is always convolved as ``channels_last`` between two
    transposes: one code path on every machine, bit-identical to the ``channels_last``
    computation. The torch and JAX backends convolve either layout natively everywhere.

    An empty batch (known when the layer is called eagerly) is convolved as one zero
    sample and sliced away: TensorFlow's oneDNN convolution returns an empty input
    unchanged, so the output would have the input's shape.

    Shapes: ``inputs`` ``(batch, *spatial, in)`` or ``(batch, in, *spatial)``, ``kernel``
    ``(*k, in / groups, out)``; the output has the input's layout.
    """
    if inputs.shape[0] == 0:
        one = ops.zeros((1, *inputs.shape[1:]), dtype=inputs.dtype)
        options = {"strides": strides, "padding": padding, "dilation_rate": dilation_rate}
        return conv(one, kernel, data_format=data_format, **options)[:0]
    if data_format == "channels_first" and keras.backend.backend() == "tensorflow":
        rank = len(inputs.shape) - 2
        to_last = (0, *range(2, rank + 2), 1)
        to_first = (0, rank + 1, *range(1, rank + 1))
        outputs = ops.conv(
            ops.transpose(inputs, to_last),
            kernel,
            strides=strides,
            padding=padding,
            data_format="channels_last",
            dilation_rate=dilation_rate,
        )
        return ops.transpose(outputs, to_first)
    return ops.conv(
        inputs,
        kernel,
        strides=strides,
        padding=padding,
        data_format=data_format,
        dilation_rate=dilation_rate,
    )


def gather_columns(values: Any, index: np.ndarray, shape: tuple[int, ...]) -> Any:
    """The kernel ``shape`` (``(*k, in, out)``) whose output channel ``c * m + j`` is free
    column ``c`` of ``values`` (``(*k, in, columns)``, ``m = out / columns``) read at rows
    ``index[j * K:(j + 1) * K]`` of its ``(K, columns)`` view
    (:func:`symconv.core.row_gather.column_rows`): one row gather of ``m * K`` rows and a
    transpose, where :func:`gather` needs a full-size index."""
    columns = values.shape[-1]
    members = shape[-1] // columns
    source = ops.reshape(values, (-1, columns))  # (K, columns)
    rows = ops.take(source, index, axis=0)  # (m * K, columns): an embedding lookup
    rows = ops.reshape(rows, (members, -1, columns))
    return ops.reshape(ops.transpose(rows, (1, 2, 0)), shape)  # (K, columns, m)


def gather(values: Any, index: np.ndarray) -> Any:
    """``values.reshape(-1)[index]``: shape ``index.shape``, differentiable in ``values``.

    Written as a row gather from ``(n, 1)``: on the torch backend that is an embedding
    lookup, which ONNX export handles; ``keras.ops.take`` in any other form calls
    ``torch.ravel``, which the TorchScript ONNX exporter (Keras' choice for a dynamic batch)
    does not support.
    """
    rows = ops.take(ops.reshape(values, (-1, 1)), index, axis=0)
    return ops.reshape(rows, index.shape)


#: The Keras conv layers' weight options, with the module that deserializes each.
_WEIGHT_OPTIONS = {
    "activation": keras.activations,
    "kernel_initializer": keras.initializers,
    "bias_initializer": keras.initializers,
    "kernel_regularizer": keras.regularizers,
    "bias_regularizer": keras.regularizers,
    "kernel_constraint": keras.constraints,
    "bias_constraint": keras.constraints,
}
#: Their defaults, as in ``keras.layers.Conv2D``.
WEIGHT_OPTION_DEFAULTS = {
    "activation": None,
    "kernel_initializer": "glorot_uniform",
    "bias_initializer": "zeros",
    "kernel_regularizer": None,
    "bias_regularizer": None,
    "kernel_constraint": None,
    "bias_constraint": None,
}


def set_weight_options(layer: keras.layers.Layer, **options: Any) -> None:
    """Set ``activation`` and the kernel/bias initializers, regularizers and constraints
    on ``layer`` from their ``keras.layers.Conv2D``-style arguments (names or objects)."""
    unknown = set(options) - set(_WEIGHT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown weight options {sorted(unknown)}")
    for name, value in options.items():
        setattr(layer, name, _WEIGHT_OPTIONS[name].get(value))


def weight_options_config(layer: keras.layers.Layer) -> dict[str, Any]:
    """The serialized weight options of ``layer`` (and its activity regularizer), for
    ``get_config``."""
    config = {
        name: module.serialize(getattr(layer, name)) for name, module in _WEIGHT_OPTIONS.items()
    }
    config["activity_regularizer"] = keras.regularizers.serialize(layer.activity_regularizer)
    return config


class ChannelAxisLayer(keras.layers.Layer):
    """A Keras layer that reads its channel axis from ``data_format`` and needs the channel
    count known to build."""

    data_format: str

    @property
    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def _input_channels(self, input_shape: Sequence[int | None]) -> int:
        """The input's channel count, which must be known to build the weights."""
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known channel dimension; got input shape "
                f"{tuple(input_shape)} with data_format={self.data_format!r}"
            )
        return int(channels)


class SymconvLayer(ChannelAxisLayer):
    """Base of the symconv Keras layers with weights.

    Takes ``keras.layers.Conv2D``'s weight options as keyword arguments (``activation``,
    ``kernel_initializer``, ``bias_initializer``, ``kernel_regularizer``,
    ``bias_regularizer``, ``kernel_constraint``, ``bias_constraint``, with Conv2D's
    defaults; ``activity_regularizer``, ``name``, ``dtype``, ... go to
    ``keras.layers.Layer``).
    """

    def __init__(self, **kwargs: Any) -> None:
        options = {name: kwargs.pop(name, d) for name, d in WEIGHT_OPTION_DEFAULTS.items()}
        super().__init__(**kwargs)
        set_weight_options(self, **options)
