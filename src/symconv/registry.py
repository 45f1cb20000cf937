"""Every layer family, paired across frameworks: torch class <-> Keras class <-> spec.

Interop (:mod:`symconv.keras.interop`), the conformance tests and the docs read this one
table. A layer family is added by writing its spec in :mod:`symconv.core` (a
:class:`~symconv.core.spec.LayerSpec`), a torch class and a Keras class that are built
from it (each exposes ``.spec`` and a ``from_spec`` classmethod), and one line here.

Classes are named by import path, so reading the table imports neither framework.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["FAMILIES", "Family", "family_of"]


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Family:
    """One layer family in one dimensionality.

    ``ndim`` is passed to the spec's ``example`` for families with 1-, 2- and 3-D
    layers; ``keras`` is ``None`` for a torch-only layer.
    """

    name: str
    spec: str
    torch: str
    keras: str | None
    ndim: int | None = None

    @property
    def spec_class(self) -> Any:
        return _load(self.spec)

    @property
    def torch_class(self) -> Any:
        return _load(self.torch)

    @property
    def keras_class(self) -> Any:
        return None if self.keras is None else _load(self.keras)

    def example(self) -> Any:
        """A small valid spec of this family (see ``LayerSpec.example``)."""
        return self.spec_class.example(self.ndim)


_SYM = "symconv.core.symmetric_conv:SymmetricConvSpec"

_GROUP = "symconv.core.group_conv:GroupConvSpec"

_NORM = "symconv.core.group_norm:GroupBatchNormSpec"
_KERAS_NORM = "symconv.keras.group_norm:GroupBatchNormalization"

FAMILIES: tuple[Family, ...] = (
    Family(
        "symmetric1d",
        _SYM,
        "symconv.nn.symmetric:SymmetricConv1d",
        "symconv.keras.symmetric:SymmetricConv1D",
        ndim=1,
    ),
    Family(
        "symmetric2d",
        _SYM,
        "symconv.nn.symmetric:SymmetricConv2d",
        "symconv.keras.symmetric:SymmetricConv2D",
        ndim=2,
    ),
    Family(
        "symmetric3d",
        _SYM,
        "symconv.nn.symmetric:SymmetricConv3d",
        "symconv.keras.symmetric:SymmetricConv3D",
        ndim=3,
    ),
    Family(
        "twist",
        "symconv.core.twist:TwistSpec",
        "symconv.nn.twist:ConvTwist",
        "symconv.keras.twist:ConvTwist2D",
    ),
    Family(
        "global_conv",
        "symconv.core.global_conv:GlobalConvSpec",
        "symconv.nn.global_conv:GlobalConv1d",
        "symconv.keras.global_conv:GlobalConv1D",
    ),
    Family("orbit_pool", "symconv.core.pooling:OrbitPoolSpec", "symconv.nn.orbit:OrbitPool", None),
    Family(
        "topk",
        "symconv.core.pooling:TopKPoolSpec",
        "symconv.nn.pooling:TopKPool",
        "symconv.keras.pooling:TopKPool",
    ),
    Family(
        "group_pool",
        "symconv.core.pooling:GroupPoolSpec",
        "symconv.nn.group_pool:GroupPool",
        "symconv.keras.group_pool:GroupPool",
    ),
    Family(
        "group_conv1d",
        _GROUP,
        "symconv.nn.group_conv:GroupConv1d",
        "symconv.keras.group_conv:GroupConv1D",
        ndim=1,
    ),
    Family(
        "group_conv2d",
        _GROUP,
        "symconv.nn.group_conv:GroupConv2d",
        "symconv.keras.group_conv:GroupConv2D",
        ndim=2,
    ),
    Family(
        "group_conv3d",
        _GROUP,
        "symconv.nn.group_conv:GroupConv3d",
        "symconv.keras.group_conv:GroupConv3D",
        ndim=3,
    ),
    # One Keras class for every rank, as keras.layers.BatchNormalization: its built
    # spec's rank picks the family.
    Family("group_batch_norm1d", _NORM, "symconv.nn.group_norm:GroupBatchNorm1d", _KERAS_NORM, 1),
    Family("group_batch_norm2d", _NORM, "symconv.nn.group_norm:GroupBatchNorm2d", _KERAS_NORM, 2),
    Family("group_batch_norm3d", _NORM, "symconv.nn.group_norm:GroupBatchNorm3d", _KERAS_NORM, 3),
)


def family_of(layer: object) -> Family | None:
    """The family whose torch or Keras class is exactly ``type(layer)``, or ``None``. A
    Keras class shared by several ranks gives the family of its spec's rank (the first
    one while the layer is not built)."""
    cls = type(layer)
    path = f"{cls.__module__}:{cls.__qualname__}"
    matches = [f for f in FAMILIES if path in (f.torch, f.keras)]
    if len(matches) > 1:
        rank = getattr(getattr(layer, "spec", None), "spatial_rank", None)
        matches = [f for f in matches if f.ndim == rank] or matches
    return matches[0] if matches else None
