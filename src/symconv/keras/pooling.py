"""Keras 3 ``TopKPool``: the ``k`` largest values per channel over the length axis,
twin of :class:`symconv.TopKPool`."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from symconv.nn.pooling import check_k, check_length

__all__ = ["TopKPool"]


@keras.saving.register_keras_serializable(package="symconv")
class TopKPool(keras.layers.Layer):
    """The ``k`` largest values of every channel along the length axis, sorted descending.

    ``k = 1`` is ``keras.layers.GlobalMaxPooling1D(keepdims=True)``. Gradients flow to the
    selected entries only.

    Args:
        k: how many values to keep per channel (a positive int).

    Masking: the layer consumes a Keras mask ``(batch, n)`` (``True`` at valid positions,
    e.g. from ``keras.layers.Masking`` through :class:`GlobalConv1D`) or ``mask=`` in the
    call: masked positions are never selected, and a set with fewer than ``k`` valid
    positions gets 0 in the remaining (last) slots. The output carries no mask.

    Shapes: input ``(batch, n, channels)``, output ``(batch, k, channels)`` with
    ``out[:, 0] >= out[:, 1] >= ...``. ``n >= k`` is required: a ``ValueError`` naming
    both when the length is known (at build time for a static length, and in every
    eager call); inside a compiled graph with an unknown length the backend's own
    top-k error is raised instead.
    """

    def __init__(self, k: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = check_k(k)
        self.input_spec = keras.layers.InputSpec(ndim=3)
        self.supports_masking = True

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[1] is not None:
            check_length(self.k, int(input_shape[1]))

    def call(self, inputs: Any, mask: Any = None) -> Any:
        length = inputs.shape[1]
        if isinstance(length, int):
            check_length(self.k, length)
        if mask is not None:
            keep = ops.expand_dims(ops.cast(mask, "bool"), -1)  # (batch, n, 1)
            inputs = ops.where(keep, inputs, ops.full_like(inputs, float("-inf")))
        # top_k works on the last axis: (batch, n, c) -> (batch, c, n) -> (batch, c, k).
        values, _ = ops.top_k(ops.transpose(inputs, (0, 2, 1)), self.k, sorted=True)
        values = ops.transpose(values, (0, 2, 1))
        if mask is None:
            return values
        # Slots beyond a set's number of valid positions hold 0, not -inf.
        count = ops.sum(ops.cast(mask, "int32"), axis=1)  # (batch,)
        filled = ops.arange(self.k)[None, :, None] < count[:, None, None]
        return ops.where(filled, values, ops.zeros_like(values))

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None  # the k slots are not positions: nothing to mask downstream

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.k, input_shape[2])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["k"] = self.k
        return config
