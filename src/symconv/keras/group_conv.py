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

from typing import Any

import keras
import numpy as np
from keras import ops

from symconv.core.group_conv import GroupConvSpec, conversion_reason
from symconv.core.groups import DEFAULT_GROUP
from symconv.keras.gathered import GatheredConv

__all__ = ["GroupConv1D", "GroupConv2D", "GroupConv3D"]


class _GroupConv(GatheredConv):
    """Shared implementation of ``GroupConv1D/2D/3D``: ``keras.ops.conv`` with the kernel
    gathered from the free one by :meth:`GroupConvSpec.gather_index`."""

    _spec_class = GroupConvSpec

    def __init__(self, *args: Any, group: str | None = None, **kwargs: Any) -> None:
        """``keras.layers.ConvND``'s arguments plus ``group``."""
        super().__init__(*args, family_options={"group": group}, **kwargs)

    @classmethod
    def _spec_from_keras(cls, conv_args: dict[str, Any], *, group: str | None) -> GroupConvSpec:
        key = DEFAULT_GROUP[cls.rank] if group is None else group
        return GroupConvSpec.from_keras(cls.rank, group=key, **conv_args)

    @property
    def group(self) -> str:
        """The group key (``'hr'``, ``'r'``, ``'hv'``, ...)."""
        return self.spec.group.key

    def _indices(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        return self.spec.gather_index(layout="keras"), self.spec.bias_index()

    def _representatives(self) -> np.ndarray:
        # Member e of each output field is the free filter itself.
        return np.arange(self.spec.out_fields) * self.spec.group.order

    def _family_config(self) -> dict[str, Any]:
        return {"group": self.group}

    @classmethod
    def from_conv(cls, conv: keras.layers.Layer, group: str | None = None) -> _GroupConv:
        """The group convolution closest to a built ``keras.layers.ConvND`` (its settings):
        each free entry is the mean of its ``|G|`` copies, each bias the mean over its
        field; a ``conv`` that already is a group convolution is reproduced exactly."""
        config, in_channels = cls._plain_source(conv)
        group = DEFAULT_GROUP[cls.rank] if group is None else group
        reason = conversion_reason(
            cls.rank, in_channels, conv.filters, tuple(conv.kernel_size), conv.groups, group,
            stride=tuple(conv.strides), padding=str(conv.padding),
            dilation=tuple(conv.dilation_rate), keras=True,
        )  # fmt: skip
        if reason is not None:
            raise ValueError(f"cannot make a {cls.__name__} of {conv.name}: {reason}")
        layer = cls(**config, group=group)
        layer.build(layer._input_shape_for(in_channels))
        layout = layer.spec.params()[0]
        full = np.transpose(ops.convert_to_numpy(conv.kernel), layout.to_torch)
        layer.kernel.assign(np.transpose(layer.spec.project(full), layout.to_keras))
        if conv.use_bias:
            bias = ops.convert_to_numpy(conv.bias).reshape(-1, layer.spec.group.order)
            layer.bias.assign(bias.mean(axis=1))
        return layer


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
