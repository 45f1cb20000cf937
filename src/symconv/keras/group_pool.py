"""Keras 3 ``GroupPool``: pool the member axis of group feature maps away, or down to a
subgroup. The twin of :class:`symconv.nn.group_pool.GroupPool` (same groups, member
order, cosets and channel layout; rules from :mod:`symconv.core.groups`)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from symconv.core.group_conv import check_fields
from symconv.core.pooling import GroupPoolSpec
from symconv.core.validate import type_error
from symconv.keras._common import ChannelAxisLayer, data_format_arg

__all__ = ["GroupPool"]


@keras.saving.register_keras_serializable(package="symconv")
class GroupPool(ChannelAxisLayer):
    """Max or mean over the members of every field, or over the cosets of a subgroup.

    Args:
        group: the key of the input's group (``'hr'``, ``'r'``, ``'hv'``, ...).
        mode: ``'max'`` or ``'mean'``.
        to: ``None`` pools every field to one channel (invariant fields: they transform
            like images); a subgroup key (``'r'`` for ``'hr'``) keeps that subgroup's
            members: member ``h_i`` of the output pools ``h_i c`` over coset
            representatives ``c`` (:meth:`symconv.core.groups.Group.cosets`), so the
            output is a group feature map of the subgroup.
        data_format: ``'channels_last'`` (default: ``keras.config.image_data_format()``)
            or ``'channels_first'``: where the channel axis is.

    Shapes: input ``(batch, *spatial, F * |G|)`` (``channels_last``) or
    ``(batch, F * |G|, *spatial)``; output the same with ``F * |H|`` channels (``|H| = 1``
    when ``to`` is ``None``). Any number of spatial axes; the channels must be known.
    """

    def __init__(
        self,
        group: str,
        mode: str = "max",
        to: str | None = None,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec = GroupPoolSpec.from_args(group, mode, to)
        self.group, self.mode, self.to = spec.group.key, spec.mode, spec.to
        self._cosets = spec.cosets
        self.order = spec.group.order
        self.data_format = data_format_arg(data_format)
        self._index: np.ndarray | None = None

    @classmethod
    def from_spec(
        cls, spec: GroupPoolSpec, data_format: str = "channels_last", **keras_kwargs: Any
    ) -> GroupPool:
        """The layer ``spec`` describes; ``keras_kwargs``: e.g. ``name``."""
        if not isinstance(spec, GroupPoolSpec):
            raise type_error("spec", spec, "a GroupPoolSpec")
        return cls(**spec.keras_kwargs(data_format), **keras_kwargs)

    @property
    def out_order(self) -> int:
        """Channels per output field: ``|H|``, or 1 when ``to`` is ``None``."""
        return int(self._cosets.shape[0])

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = self._input_channels(input_shape)
        fields = check_fields("channels", channels, self.spec.group)
        # index[f * |H| + i, j]: input channel of field f, coset row i, representative j.
        offsets = np.arange(fields, dtype=np.int64)[:, None, None] * self.order
        self._index = (offsets + self._cosets[None]).reshape(fields * self.out_order, -1)
        self._index = self._index.astype(np.int32)

    def call(self, inputs: Any) -> Any:
        # (batch, *spatial, F*|H|, cosets) or (batch, F*|H|, cosets, *spatial)
        picked = ops.take(inputs, self._index, axis=self._channel_axis % len(inputs.shape))
        axis = -1 if self.data_format == "channels_last" else 2
        if self.mode == "max":
            if 0 in tuple(picked.shape):  # Keras refuses the max of an empty tensor
                return ops.sum(picked, axis=axis)  # the (empty) result's shape
            return ops.max(picked, axis=axis)
        # A sum, not keras.ops.mean: on the torch backend that averages float64 in float32.
        return ops.sum(picked, axis=axis) / self._index.shape[1]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = list(input_shape)
        channels = shape[self._channel_axis]
        if channels is not None:
            shape[self._channel_axis] = channels // self.order * self.out_order
        return tuple(shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"group": self.group, "mode": self.mode, "to": self.to, "data_format": self.data_format}
        )
        return config
