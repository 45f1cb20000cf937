"""Keras 3 ``ConvTwist2D``: a convolution that can learn to rotate and dilate, the twin of
:class:`symconv.ConvTwist` (same parametrization, so weights move between them exactly)::

    out = conv(x, W) + (X - cx) * conv(x, Wx) + (Y - cy) * conv(x, Wy)  (+ bias)

``Wx``, ``Wy`` are odd kernels (``K(-d) = -K(d)``, center 0) stored by their free taps;
``X[j] = 2 j / W_out`` and ``Y[i] = 2 i / H_out`` are the output grids; ``cx``, ``cy`` are
learnable per output channel; padding is ``kernel_size // 2`` on every side (explicit,
exactly as the torch layer: Keras ``'same'`` differs from it for strides > 1 on even sizes).
See :mod:`symconv.nn.twist` for the idea.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from symconv.core.twist import KERAS_PADDING_MODES, TwistSpec
from symconv.keras._common import (
    SymconvLayer,
    conv,
    data_format_arg,
    independent_initializer,
    weight_options_config,
)

__all__ = ["ConvTwist2D"]

#: padding_mode -> keras.ops.pad mode, for the modes every backend's ``ops.pad`` has.
PADDING_MODES = dict(zip(KERAS_PADDING_MODES, ("constant", "reflect"), strict=True))


def odd_kernel(free: Any, kernel_size: int) -> Any:
    """Free taps ``((k*k - 1) / 2, in/g, out)`` -> odd kernel ``(k, k, in/g, out)``.

    Row-major tap ``i`` and tap ``k*k - 1 - i`` sit at ``d`` and ``-d`` (as in torch).
    """
    center = ops.zeros((1, *free.shape[1:]), dtype=free.dtype)
    flat = ops.concatenate([free, center, -ops.flip(free, axis=0)], axis=0)
    return ops.reshape(flat, (kernel_size, kernel_size, *free.shape[1:]))


@keras.saving.register_keras_serializable(package="symconv")
class ConvTwist2D(SymconvLayer):
    r"""A 2-D convolution plus position-weighted odd convolutions that generate rotations
    and dilations about learnable centers (Keras 3; TensorFlow, PyTorch and JAX backends).

    .. math::
        \text{out} = x \star W + (X - c_x)\,(x \star W_x) + (Y - c_y)\,(x \star W_y) + b

    Args:
        filters: output channels.
        kernel_size: odd size ``k`` of the square kernels (an int or ``(k, k)``).
        strides: an int or a pair; the grids follow the *output* pixels.
        groups: blocked connections as in ``keras.layers.Conv2D``.
        use_bias: add a bias per output channel (on by default, as in ``keras.layers.Conv2D``
            and the torch layer).
        init_max: the centers start uniform in ``[-init_max, init_max]``.
        padding_mode: ``'zeros'`` or ``'reflect'`` (padding ``k // 2`` on every side).
        data_format: ``'channels_last'`` (default) or ``'channels_first'``.
        activation: a Keras activation applied to the output.
        kernel_initializer: draws ``W``, and a kernel ``V`` whose odd part is ``Wx`` (``Wy``
            is ``Wx`` rotated by 90 degrees), as the torch layer does.
        bias_initializer, kernel_regularizer (on ``W`` and the free taps),
        bias_regularizer, activity_regularizer, kernel_constraint (on ``W``),
        bias_constraint: as in ``keras.layers.Conv2D``.

    Weights: ``kernel`` ``W`` ``(k, k, in/groups, filters)``; ``twist_x``, ``twist_y`` the
    free taps of ``Wx``, ``Wy``, ``((k * k - 1) / 2, in/groups, filters)``; ``center_x``,
    ``center_y`` ``(filters,)``; ``bias`` ``(filters,)``. The odd kernels as used are the
    properties ``kernel_x`` and ``kernel_y`` ``(k, k, in/groups, filters)``.

    Shapes: input ``(batch, H, W, channels)`` (or channels first), output
    ``(batch, H_out, W_out, filters)`` with ``H_out = (H - 1) // strides + 1``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int] = 3,
        strides: int | tuple[int, int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        init_max: float = 1.5,
        padding_mode: str = "zeros",
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = TwistSpec.from_keras(
            filters, kernel_size, strides, groups, use_bias, init_max, padding_mode
        )
        self.filters = self.spec.out_channels
        self.kernel_size = (self.spec.kernel_size, self.spec.kernel_size)
        self.strides = self.spec.stride
        self.groups = self.spec.groups
        self.use_bias = self.spec.bias
        self.init_max = self.spec.init_max
        self.padding_mode = self.spec.padding_mode
        self.data_format = data_format_arg(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @classmethod
    def from_spec(
        cls, spec: TwistSpec, data_format: str = "channels_last", **keras_kwargs: Any
    ) -> ConvTwist2D:
        """A ``ConvTwist2D`` as ``spec`` describes, built when ``spec.in_channels`` is known;
        ``keras_kwargs``: the weight options and ``keras.layers.Layer`` arguments."""
        if not isinstance(spec, TwistSpec):
            raise TypeError(f"spec={spec!r} must be a TwistSpec, got {type(spec).__name__}")
        layer = cls(**spec.keras_kwargs(data_format), **keras_kwargs)
        if spec.in_channels is not None:
            layer.build(spec.keras_input_shape(data_format))
        return layer

    # -- weights -------------------------------------------------------------------------
    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_channels = self._input_channels(input_shape)
        self.spec = self.spec.with_in_channels(in_channels)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={self._channel_axis: in_channels})
        shapes = {p.keras_name: p.keras_shape for p in self.spec.params()}
        shape = shapes["kernel"]
        self.kernel = self.add_weight(
            name="kernel",
            shape=shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        init_x, init_y = self._twist_initializers(shape)
        self.twist_x = self.add_weight(
            name="twist_x",
            shape=shapes["twist_x"],
            initializer=init_x,
            regularizer=self.kernel_regularizer,
        )
        self.twist_y = self.add_weight(
            name="twist_y",
            shape=shapes["twist_y"],
            initializer=init_y,
            regularizer=self.kernel_regularizer,
        )
        # One (unseeded) initializer object per center: each repeats its own values.
        for name in ("center_x", "center_y"):
            center_init = keras.initializers.RandomUniform(-self.init_max, self.init_max)
            setattr(
                self,
                name,
                self.add_weight(name=name, shape=shapes[name], initializer=center_init),
            )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=shapes["bias"],
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None

    def _twist_initializers(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """The initializers of ``twist_x`` and ``twist_y`` (as the torch layer draws them):
        ``Wx`` is the odd part of a kernel ``V`` of ``shape`` ``(k, k, in/g, out)`` drawn like
        ``W``, ``Wy`` is ``Wx`` rotated by 90 degrees; each returns its kernel's free taps."""
        k = shape[0]
        drawn: dict[str, Any] = {}
        # Independent of W's draw: one Keras initializer object repeats its values.
        v_initializer = independent_initializer(self.kernel_initializer, 1)

        def twist_init(axis: str):  # type: ignore[no-untyped-def]
            def init(free_shape: tuple[int, ...], dtype: Any = None) -> Any:
                if "x" not in drawn:
                    v = v_initializer(shape, dtype=dtype)
                    wx = (v - ops.flip(v, axis=(0, 1))) / 2
                    drawn["x"] = wx
                    # torch: wx.transpose(2, 3).flip(3) on (out, in, kh, kw).
                    drawn["y"] = ops.flip(ops.transpose(wx, (1, 0, 2, 3)), axis=1)
                taps = ops.reshape(drawn[axis], (k * k, *shape[2:]))
                return taps[: free_shape[0]]

            return init

        return twist_init("x"), twist_init("y")

    @property
    def kernel_x(self) -> Any:
        """The odd kernel ``Wx`` ``(k, k, in/groups, filters)`` (differentiable)."""
        return odd_kernel(self.twist_x, self.kernel_size[0])

    @property
    def kernel_y(self) -> Any:
        """The odd kernel ``Wy`` ``(k, k, in/groups, filters)`` (differentiable)."""
        return odd_kernel(self.twist_y, self.kernel_size[0])

    def fused_kernel(self) -> Any:
        """The single convolution's kernel ``(k, k, in/groups, 3 * filters)``: per group,
        that group's ``W - cx Wx - cy Wy``, ``Wx``, ``Wy`` (so a grouped convolution keeps
        every group's three outputs inside its own slice)."""
        wx, wy = self.kernel_x, self.kernel_y
        w0 = self.kernel - self.center_x * wx - self.center_y * wy
        k, g = self.kernel_size[0], self.groups
        head = (k, k, int(self.kernel.shape[2]))
        parts = [ops.reshape(w, (*head, g, self.filters // g)) for w in (w0, wx, wy)]
        return ops.reshape(ops.stack(parts, axis=-2), (*head, 3 * self.filters))

    # -- forward -------------------------------------------------------------------------
    def call(self, inputs: Any) -> Any:
        if inputs.shape[0] == 0:  # reflect/replicate padding refuses an empty batch
            return self.call(ops.zeros((1, *inputs.shape[1:]), dtype=inputs.dtype))[:0]
        p = self.kernel_size[0] // 2
        if p:
            pads = [[0, 0], [p, p], [p, p], [0, 0]]
            if self.data_format == "channels_first":
                pads = [[0, 0], [0, 0], [p, p], [p, p]]
            inputs = ops.pad(inputs, pads, mode=PADDING_MODES[self.padding_mode])
        y = conv(
            inputs,
            self.fused_kernel(),
            strides=self.strides,
            padding="valid",
            data_format=self.data_format,
        )
        g, per_group = self.groups, self.filters // self.groups
        shape = ops.shape(y)
        if self.data_format == "channels_last":
            h, w = shape[1], shape[2]
            y = ops.reshape(y, (-1, h, w, g, 3, per_group))
            a, b, c = y[..., 0, :], y[..., 1, :], y[..., 2, :]
            gx = ops.reshape(self._grid(w, y.dtype), (-1, 1, 1))
            gy = ops.reshape(self._grid(h, y.dtype), (-1, 1, 1, 1))
            out = ops.reshape(a + gx * b + gy * c, (-1, h, w, self.filters))
        else:
            h, w = shape[2], shape[3]
            y = ops.reshape(y, (-1, g, 3, per_group, h, w))
            a, b, c = y[:, :, 0], y[:, :, 1], y[:, :, 2]
            gx = self._grid(w, y.dtype)
            gy = ops.reshape(self._grid(h, y.dtype), (-1, 1))
            out = ops.reshape(a + gx * b + gy * c, (-1, self.filters, h, w))
        if self.use_bias:
            bias_shape = [1, 1, 1, 1]
            bias_shape[self._channel_axis] = self.filters
            out = out + ops.reshape(self.bias, bias_shape)
        if self.activation is not None:
            out = self.activation(out)
        return out

    @staticmethod
    def _grid(n: Any, dtype: Any) -> Any:
        """``2 j / n`` for ``j < n``, computed in float32 (as torch) and cast once."""
        grid = ops.arange(n, dtype="float32") * 2.0 / ops.cast(n, "float32")
        return ops.cast(grid, dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if self.data_format == "channels_last":
            spatial = input_shape[1:3]
        else:
            spatial = input_shape[2:4]
        out = tuple(
            None if n is None else (n - 1) // s + 1
            for n, s in zip(spatial, self.strides, strict=True)
        )
        if self.data_format == "channels_last":
            return (input_shape[0], *out, self.filters)
        return (input_shape[0], self.filters, *out)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self.spec.keras_kwargs(self.data_format))
        config.update(weight_options_config(self))
        return config
