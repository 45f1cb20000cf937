"""Keras 3 ``TopKPool``: the ``k`` largest values per channel over the length axis,
twin of :class:`symconv.TopKPool`; its rules live in :mod:`symconv.core.pooling`."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from symconv.core.pooling import TopKPoolSpec, check_length
from symconv.core.validate import check_choice, type_error

__all__ = ["TopKPool"]


def _top_k(x: Any, k: int) -> Any:
    """The ``k`` largest values along the last axis, sorted descending: ``(..., n) ->
    (..., k)``. On JAX a descending sort and a slice: ``jax.lax.top_k`` lowers to a
    StableHLO op newer than TensorFlow can load, so a model using it exports to a SavedModel
    that fails when called; ``sort`` lowers to an op every StableHLO reader knows."""
    if keras.backend.backend() == "jax":
        return -ops.sort(-x, axis=-1)[..., :k]
    return ops.top_k(x, k, sorted=True)[0]


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

    Export: a ``length=None`` input exports to a TensorFlow SavedModel from TensorFlow, but
    not from JAX (which cannot know ``n >= k`` for a symbolic length), nor to ONNX from
    torch with ``k > 1`` (Keras traces a length-``None`` input at length 1): both raise a
    ``ValueError`` saying so. A fixed length exports everywhere.
    """

    def __init__(self, k: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = TopKPoolSpec.from_keras(k)
        self.k = self.spec.k
        self.input_spec = keras.layers.InputSpec(ndim=3)
        self.supports_masking = True

    @classmethod
    def from_spec(
        cls, spec: TopKPoolSpec, data_format: str = "channels_last", **keras_kwargs: Any
    ) -> TopKPool:
        """The layer ``spec`` describes (it needs no build). ``data_format`` is checked but
        changes nothing: the input is ``(batch, n, channels)`` (the argument exists so that
        every family's ``from_spec`` takes it). ``keras_kwargs``: e.g. ``name``."""
        if not isinstance(spec, TopKPoolSpec):
            raise type_error("spec", spec, "a TopKPoolSpec")
        check_choice("data_format", data_format, ("channels_last", "channels_first"))
        return cls(**spec.keras_kwargs(data_format), **keras_kwargs)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[1] is not None:
            check_length(self.k, int(input_shape[1]))

    def call(self, inputs: Any, mask: Any = None) -> Any:
        self._check_call_length(inputs.shape[1])
        if mask is not None:
            keep = ops.expand_dims(ops.cast(mask, "bool"), -1)  # (batch, n, 1)
            inputs = ops.where(keep, inputs, ops.full_like(inputs, float("-inf")))
        # top_k works on the last axis: (batch, n, c) -> (batch, c, n) -> (batch, c, k).
        values = ops.transpose(_top_k(ops.transpose(inputs, (0, 2, 1)), self.k), (0, 2, 1))
        if mask is None:
            return values
        # Slots beyond a set's number of valid positions hold 0, not -inf.
        count = ops.sum(ops.cast(mask, "int32"), axis=1)  # (batch,)
        filled = ops.arange(self.k)[None, :, None] < count[:, None, None]
        return ops.where(filled, values, ops.zeros_like(values))

    def _check_call_length(self, length: Any) -> None:
        """``n >= k`` wherever the length is known when the call runs or is traced."""
        backend = keras.backend.backend()
        if backend == "torch" and length is not None and not isinstance(length, int):
            import torch

            # torch's ONNX tracing gives sizes as tensors; Keras traces a length-None input
            # at length 1.
            if torch.onnx.is_in_onnx_export() and int(length) < self.k:
                raise ValueError(
                    f"TopKPool(k={self.k}) cannot be exported to ONNX from the torch backend "
                    f"with a length-None input: Keras traces it at length {int(length)} < k; "
                    f"give keras.Input a fixed length of at least {self.k}"
                )
        if isinstance(length, int):
            check_length(self.k, length)
        elif length is not None and backend == "jax":
            # A symbolic length: JAX is exporting with a polymorphic shape (a SavedModel of a
            # model whose keras.Input has length None), where JAX cannot know that n >= k.
            raise ValueError(
                f"TopKPool(k={self.k}) on the JAX backend needs a fixed length to export "
                f"(got length {length}): give keras.Input a fixed length, or export with "
                "the TensorFlow backend"
            )

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None  # the k slots are not positions: nothing to mask downstream

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.k, input_shape[2])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["k"] = self.k
        return config
