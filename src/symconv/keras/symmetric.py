"""Keras 3 reflection-symmetric convolutions: ``SymmetricConv1D/2D/3D``.

The Keras twins of :class:`symconv.SymmetricConv1d/2d/3d`, driven by the same
framework-agnostic :func:`symconv.symmetry.make_plan`: the same ``symmetry`` spec forms
(counts, percentage strings, ``'hv:50%,h:2'``), the same validation messages, the same
channel layout and the same ``share_bias`` semantics. Built with ``keras.ops`` only, so
they run on the TensorFlow, PyTorch and JAX backends.

Shapes (``k`` the kernel size, ``g`` the groups)::

    kernel           (*k, in_channels / g, plan.n_free)     free filters (the only weight)
    bias             (plan.n_bias,)                         free biases, if use_bias
    expanded_kernel  (*k, in_channels / g, filters)         what the convolution uses
    expanded_bias    (filters,)
    input            (batch, *spatial, in_channels)         channels_last (default)
                     (batch, in_channels, *spatial)         channels_first
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from symconv.core.symmetric_conv import SymmetricConvSpec
from symconv.core.symmetry import SymmetrySpec
from symconv.keras._common import (
    SymconvLayer,
    conv,
    conv_output_length,
    data_format_arg,
    gather,
    weight_options_config,
)

__all__ = ["SymmetricConv1D", "SymmetricConv2D", "SymmetricConv3D"]


class _SymmetricConv(SymconvLayer):
    """Shared implementation of ``SymmetricConv1D/2D/3D`` (a standalone ``keras.layers.Layer``
    calling ``keras.ops.conv`` on the kernel expanded from the free one)."""

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
        use_bias: bool = True,
        *,
        symmetry: SymmetrySpec = None,
        share_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # The shared spec validates every argument: the same rules and messages as torch.
        self.spec = SymmetricConvSpec.from_keras(
            self.rank,
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            groups=groups,
            use_bias=use_bias,
            symmetry=symmetry,
            share_bias=share_bias,
        )
        geometry = self.spec.conv
        self.filters = geometry.out_channels
        self.kernel_size = geometry.kernel_size
        self.strides = geometry.stride
        self.dilation_rate = geometry.dilation
        self.padding = geometry.padding
        self.groups = geometry.groups
        self.use_bias = geometry.bias
        self.plan = self.spec.plan
        self.data_format = data_format_arg(data_format)
        rank = self.rank
        self.input_spec = keras.layers.InputSpec(ndim=rank + 2)
        self._gather_index: np.ndarray | None = None
        self._bias_index = None if not self.plan.share_bias else self.plan.bias_index.copy()

    # -- weights -------------------------------------------------------------------------
    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_channels = self._input_channels(input_shape)
        self.spec = self.spec.with_in_channels(in_channels)
        in_per_group = self.spec.conv.in_per_group
        self.input_spec = keras.layers.InputSpec(
            ndim=self.rank + 2, axes={self._channel_axis: in_channels}
        )
        plan = self.plan
        self.kernel = self.add_weight(
            name="kernel",
            shape=plan.free_weight_shape(in_per_group, self.kernel_size, layout="keras"),
            initializer=self._free_kernel_initializer(in_per_group),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(plan.n_bias,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
            )
        else:
            self.bias = None
        # A plain int array, not a weight: derived from the plan, never saved.
        self._gather_index = (
            None
            if plan.is_trivial
            else plan.gather_index(in_per_group, self.kernel_size, layout="keras").astype(np.int32)
        )

    def _free_kernel_initializer(self, in_per_group: int):  # type: ignore[no-untyped-def]
        """Draw a *full* kernel with ``kernel_initializer`` (so fans are the full kernel's,
        as in ``keras.layers.Conv``) and keep each orbit's un-flipped member: the expanded
        kernel then has exactly a plain convolution's per-entry distribution."""
        full_shape = (*self.kernel_size, in_per_group, self.filters)
        # Member 0 (no flip) comes first in every orbit.
        representative = np.unique(self.plan.free_index, return_index=True)[1].astype(np.int32)
        initializer = self.kernel_initializer

        def init(shape: tuple[int, ...], dtype: Any = None) -> Any:
            return ops.take(initializer(full_shape, dtype=dtype), representative, axis=-1)

        return init

    @property
    def expanded_kernel(self) -> Any:
        """The full kernel ``(*kernel_size, in_channels / groups, filters)`` (differentiable)."""
        if self._gather_index is None:
            return self.kernel
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
        if self.data_format == "channels_last":
            spatial = input_shape[1:-1]
        else:
            spatial = input_shape[2:]
        out = tuple(
            conv_output_length(n, k, s, d, self.padding)
            for n, k, s, d in zip(
                spatial, self.kernel_size, self.strides, self.dilation_rate, strict=True
            )
        )
        if any(n is not None and n <= 0 for n in out):
            raise ValueError(
                f"input shape {tuple(input_shape)} is too small for kernel_size="
                f"{self.kernel_size} with dilation_rate={self.dilation_rate} and "
                f"padding={self.padding!r}"
            )
        if self.data_format == "channels_last":
            return (input_shape[0], *out, self.filters)
        return (input_shape[0], self.filters, *out)

    # -- conversion ----------------------------------------------------------------------
    def _plain_config(self) -> dict[str, Any]:
        config = self.get_config()
        config.pop("symmetry")
        config.pop("share_bias")
        return config

    def to_conv(self) -> keras.layers.Layer:
        """A plain ``keras.layers.ConvND`` with the expanded kernel: same outputs.

        (Except where Keras' own conv is wrong: on TensorFlow, ``channels_first`` with a
        spatial size equal to ``filters``, ``keras.ops.add`` puts its bias on the last axis.)
        """
        if not self.built:
            raise ValueError(f"{type(self).__name__}.to_conv needs a built layer")
        conv = getattr(keras.layers, self._plain_name).from_config(self._plain_config())
        conv.build(self._input_shape_for(int(self.kernel.shape[-2]) * self.groups))
        weights = [ops.convert_to_numpy(self.expanded_kernel)]
        if self.use_bias:
            weights.append(ops.convert_to_numpy(self.expanded_bias))
        conv.set_weights(weights)
        return conv

    def _input_shape_for(self, in_channels: int) -> tuple[int | None, ...]:
        """A symbolic input shape with ``in_channels`` channels, for ``build``."""
        if self.data_format == "channels_last":
            return (None,) * (self.rank + 1) + (in_channels,)
        return (None, in_channels) + (None,) * self.rank

    @classmethod
    def from_conv(
        cls, conv: keras.layers.Layer, symmetry: SymmetrySpec, share_bias: bool = True
    ) -> _SymmetricConv:
        """A symmetric layer with a built ``keras.layers.ConvND``'s configuration and the
        closest symmetric weights (each free filter the average of its orbit's members
        with their reflection undone); a ``conv`` that has the symmetry is reproduced."""
        plain = getattr(keras.layers, cls._plain_name)
        if type(conv) is not plain:
            raise TypeError(
                f"{cls.__name__}.from_conv needs a keras.layers.{cls._plain_name}, got "
                f"{type(conv).__name__}"
            )
        if not conv.built:
            raise ValueError(f"{cls.__name__}.from_conv needs a built {cls._plain_name}")
        config = conv.get_config()
        config.pop("lora_rank", None)
        config.pop("lora_alpha", None)
        config.pop("name", None)
        layer = cls(**config, symmetry=symmetry, share_bias=share_bias)
        layer.build(layer._input_shape_for(int(conv.kernel.shape[-2]) * conv.groups))
        kernel = ops.convert_to_numpy(conv.kernel)
        layer.kernel.assign(layer.plan.project(kernel, layout="keras"))
        if conv.use_bias:
            bias = ops.convert_to_numpy(conv.bias)
            layer.bias.assign(layer.plan.project_bias(bias) if layer.plan.share_bias else bias)
        return layer

    @classmethod
    def from_spec(
        cls, spec: SymmetricConvSpec, data_format: str = "channels_last", **kwargs: Any
    ) -> _SymmetricConv:
        """The layer a :class:`~symconv.core.symmetric_conv.SymmetricConvSpec` describes,
        built when the spec knows its input channels; ``kwargs`` are further Keras
        arguments (``activation``, initializers, ``name``, ...)."""
        if not isinstance(spec, SymmetricConvSpec) or spec.conv.ndim != cls.rank:
            raise TypeError(
                f"{cls.__name__}.from_spec needs a {cls.rank}-D SymmetricConvSpec, got {spec!r}"
            )
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
                "symmetry": self.plan.spec_dict(),
                "share_bias": self.plan.share_bias,
            }
        )
        return config


_DOC = """{rank}-D convolution whose output channels share weights across reflections (Keras 3).

    The Keras twin of :class:`symconv.{torch_name}`; a drop-in replacement for
    ``keras.layers.{plain}`` taking every argument of it (except ``lora_rank``) plus

    Args:
        symmetry: which output channels are reflected copies of a free filter, e.g.
            ``{example}``: counts (whole orbits) or percentage strings of ``filters``
            (rounded down to whole orbits), or a string such as ``'{string}'``. Keys:
            {keys}. ``None`` or ``{{}}`` gives a plain convolution. The channel layout
            is ``layer.plan`` (:class:`symconv.SymmetryPlan`), the same as the torch layer's.
        share_bias: one bias per orbit (default; exact flip equivariance) or, when
            ``False``, a free bias per output channel.

    Weights: ``kernel`` is the free kernel ``(*kernel_size, in_channels / groups,
    plan.n_free)`` and ``bias`` the free bias ``(plan.n_bias,)``: regularizers and
    constraints act on them. ``expanded_kernel`` and ``expanded_bias`` are the full ones,
    one gather away. Initialization: a full kernel is drawn with ``kernel_initializer``
    (fans of the full kernel, as ``keras.layers.{plain}``) and each orbit keeps its
    un-flipped member.

    Shapes: input ``(batch, {sp}, channels)`` (``channels_last``) or
    ``(batch, channels, {sp})`` (``channels_first``); output likewise with ``filters``
    channels.

    Example::

        >>> layer = {name}(16, 3, padding="same", symmetry={example})
        >>> y = layer(keras.ops.ones((2, {example_in}, 8)))
        >>> layer.plan.n_free, tuple(layer.expanded_kernel.shape[-2:])
        {example_out}
    """


#: Per rank: a doc example, its string form and output, the keys, the spatial axes, the
#: example input's spatial shape.
_DOC_ARGS = {
    1: ("{'h': 8}", "h:50%", "(12, (8, 16))", "'h' (the length axis)", "length", "10"),
    2: (
        "{'h': 2, 'v': 4, 'hv': 8}",
        "hv:50%,h:2",
        "(7, (8, 16))",
        "'h' (width), 'v' (height), 'hv'",
        "height, width",
        "10, 10",
    ),
    3: (
        "{'hvz': 8, 'hz': 4}",
        "hvz:50%",
        "(6, (8, 16))",
        "'h' (width), 'v' (height), 'z' (depth), 'hv', 'hz', 'vz', 'hvz'",
        "depth, height, width",
        "6, 6, 6",
    ),
}


def _doc(rank: int) -> str:
    example, string, example_out, keys, spatial, example_in = _DOC_ARGS[rank]
    return _DOC.format(
        rank=rank,
        torch_name=f"SymmetricConv{rank}d",
        plain=f"Conv{rank}D",
        example=example,
        string=string,
        keys=keys,
        sp=spatial,
        name=f"SymmetricConv{rank}D",
        example_in=example_in,
        example_out=example_out,
    )


@keras.saving.register_keras_serializable(package="symconv")
class SymmetricConv1D(_SymmetricConv):
    rank, _plain_name, __doc__ = 1, "Conv1D", _doc(1)


@keras.saving.register_keras_serializable(package="symconv")
class SymmetricConv2D(_SymmetricConv):
    rank, _plain_name, __doc__ = 2, "Conv2D", _doc(2)


@keras.saving.register_keras_serializable(package="symconv")
class SymmetricConv3D(_SymmetricConv):
    rank, _plain_name, __doc__ = 3, "Conv3D", _doc(3)
