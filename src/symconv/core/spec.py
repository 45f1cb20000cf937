"""What every layer family's spec provides, so backends and interop need no family code.

A *spec* is a frozen, validated description of one layer (numpy only): its arguments in
canonical form, its parameters with their torch and Keras layouts, and the settings two
twins must share. The torch layer and its Keras twin are built from the same spec, and
:mod:`symconv.interop` copies and checks weights by reading :meth:`LayerSpec.params` and
:meth:`LayerSpec.pair_fields` alone.

Layouts: a parameter's torch shape is given; its Keras variable holds the same numbers
transposed by ``to_keras`` (``np.transpose(torch_array, to_keras)``), e.g. a 2-D kernel
``(out, in/g, kh, kw)`` is ``(kh, kw, in/g, out)`` with ``to_keras = (2, 3, 1, 0)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["LayerSpec", "PairField", "ParamLayout", "kernel_to_keras"]


def kernel_to_keras(ndim: int) -> tuple[int, ...]:
    """Axes taking a torch kernel ``(out, in, *k)`` to Keras ``(*k, in, out)``."""
    return (*range(2, ndim + 2), 1, 0)


@dataclass(frozen=True)
class ParamLayout:
    """One learnable array of a layer, as both frameworks store it.

    ``torch_name``/``keras_name`` are the attribute names on the layers; ``torch_shape``
    is the torch shape (the Keras one is it permuted by ``to_keras``); ``present`` is
    ``False`` for an optional parameter the layer does not have (``bias=False``);
    ``trainable=False`` marks a statistic the layer keeps (a torch buffer, a non-trainable
    Keras weight, e.g. a running mean), which interop copies like the parameters.
    """

    torch_name: str
    keras_name: str
    torch_shape: tuple[int, ...]
    to_keras: tuple[int, ...] | None = None  # None: same layout in both
    present: bool = True
    trainable: bool = True

    @property
    def keras_shape(self) -> tuple[int, ...]:
        if self.to_keras is None:
            return self.torch_shape
        return tuple(self.torch_shape[i] for i in self.to_keras)

    @property
    def to_torch(self) -> tuple[int, ...] | None:
        """The inverse of ``to_keras``."""
        if self.to_keras is None:
            return None
        inverse = [0] * len(self.to_keras)
        for i, axis in enumerate(self.to_keras):
            inverse[axis] = i
        return tuple(inverse)


@dataclass(frozen=True)
class PairField:
    """A setting that twins must share: ``label`` names it in both frameworks' words.

    ``weights``: it changes the parameters' meaning or shapes (always checked);
    otherwise it changes only the output (checked with ``strict=True``).
    """

    label: str
    value: Any
    weights: bool = True


class LayerSpec:
    """Base of the family specs. Subclasses are frozen dataclasses that validate their
    fields in ``__post_init__`` with :mod:`symconv.core.validate`.

    ``family`` names the family in :mod:`symconv.registry`. ``in_channels`` may be
    ``None`` in a spec made for a Keras layer before it is built; :meth:`with_in_channels`
    completes it.
    """

    family: ClassVar[str]

    def params(self) -> tuple[ParamLayout, ...]:
        """The learnable arrays, then the kept statistics, in a fixed order (the order
        interop copies them)."""
        raise NotImplementedError

    def pair_fields(self) -> tuple[PairField, ...]:
        """The settings a torch layer and its Keras twin must share."""
        raise NotImplementedError

    def torch_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the torch layer built from this spec."""
        raise NotImplementedError

    def keras_kwargs(self, data_format: str = "channels_last") -> dict[str, Any]:
        """Constructor arguments of the Keras layer built from this spec."""
        raise NotImplementedError

    def with_in_channels(self, in_channels: int) -> LayerSpec:
        """This spec with its input channels known (a Keras layer's, at build)."""
        raise NotImplementedError

    @property
    def spatial_rank(self) -> int:
        """Spatial axes of the input: 2 for ``(N, C, H, W)``, 1 for ``(N, C, L)``."""
        raise NotImplementedError

    @classmethod
    def example(cls, ndim: int | None = None) -> LayerSpec:
        """A small valid spec (``ndim`` spatial axes, for families that have several), used
        by the conformance tests of every family."""
        raise NotImplementedError

    def example_input_shape(self) -> tuple[int, ...]:
        """A small torch-layout input ``(N, C, *spatial)`` this layer accepts."""
        raise NotImplementedError

    def keras_input_shape(self, data_format: str = "channels_last") -> tuple[int | None, ...]:
        """The symbolic Keras input shape that builds the twin: ``(None, *spatial, C)`` or,
        with ``channels_first``, ``(None, C, *spatial)``."""
        channels = getattr(self, "in_channels", None)
        if channels is None:
            raise ValueError("the input channels are not known yet (build the layer first)")
        if data_format == "channels_first":
            return (None, channels) + (None,) * self.spatial_rank
        return (None,) * (self.spatial_rank + 1) + (channels,)

    def describe_mismatch(self, other: LayerSpec, strict: bool) -> str | None:
        """The first setting that differs from ``other``'s (self torch, other Keras), or
        ``None``: ``"mismatched LABEL: the torch layer has X, the Keras layer Y"``."""
        theirs: Mapping[str, PairField] = {f.label: f for f in other.pair_fields()}
        for field in self.pair_fields():
            if not (field.weights or strict):
                continue
            other_value = theirs[field.label].value
            if field.value != other_value:
                return (
                    f"mismatched {field.label}: the torch layer has {field.value!r}, the Keras "
                    f"layer {other_value!r}"
                )
        return None
