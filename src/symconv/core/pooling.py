"""The specs of the pooling layers: ``TopKPool`` (torch and Keras) and ``OrbitPool`` (torch).

Neither has learnable parameters. ``TopKPool(k)`` keeps the ``k`` largest values of every
channel along the length axis; ``OrbitPool(layer_or_plan, mode)`` pools over the members
of each orbit of a symmetric layer's output channels (its plan says which channels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from symconv.core.groups import Group
from symconv.core.groups import group as make_group
from symconv.core.spec import LayerSpec, PairField, ParamLayout
from symconv.core.symmetry import SymmetryPlan, make_plan
from symconv.core.validate import check_choice, check_int, type_error

__all__ = [
    "ORBIT_POOL_MODES",
    "OrbitPoolSpec",
    "TopKPoolSpec",
    "check_k",
    "check_length",
    "plan_of",
    "GroupPoolSpec",
]

#: ``mode`` values of ``OrbitPool``.
ORBIT_POOL_MODES = ("max", "mean")


def check_k(k: object) -> int:
    """``k`` of a ``TopKPool``: an int ``>= 1``."""
    return check_int("k", k, 1)


def check_length(k: int, length: int) -> None:
    """Raise the ``ValueError`` for a ``k`` larger than the pooled length."""
    if k > length:
        raise ValueError(
            f"TopKPool(k={k}) needs at least k values along the pooled axis, but its length "
            f"is {length}"
        )


@dataclass(frozen=True)
class TopKPoolSpec(LayerSpec):
    """``k``, the whole configuration of a top-k pooling (any number of channels)."""

    family: ClassVar[str] = "topk"

    k: int

    @classmethod
    def from_torch(cls, k: object) -> TopKPoolSpec:
        return cls(check_k(k))

    from_keras = from_torch

    @classmethod
    def example(cls, ndim: int | None = None) -> TopKPoolSpec:
        return cls(3)

    @property
    def in_channels(self) -> None:
        """Always ``None``: the layer pools any number of channels."""
        return None

    @property
    def spatial_rank(self) -> int:
        return 1

    def example_input_shape(self) -> tuple[int, ...]:
        return (2, 3, self.k + 3)

    def keras_input_shape(self, data_format: str = "channels_last") -> tuple[int | None, ...]:
        """``(None, None, None)``: a Keras ``TopKPool`` takes ``(batch, n, channels)`` of any
        length ``n >= k`` and any channels."""
        return (None, None, None)

    def with_in_channels(self, in_channels: int) -> TopKPoolSpec:
        check_int("in_channels", in_channels, 1)
        return self

    def params(self) -> tuple[ParamLayout, ...]:
        return ()

    def pair_fields(self) -> tuple[PairField, ...]:
        # Not a weight, but the twins' outputs have different shapes without it: always checked.
        return (PairField("k", self.k),)

    def torch_kwargs(self) -> dict[str, Any]:
        return {"k": self.k}

    torch_kwargs_from_keras = torch_kwargs

    def keras_kwargs(self, data_format: str = "channels_last") -> dict[str, Any]:
        return {"k": self.k}


def plan_of(source: object, argname: str) -> SymmetryPlan:
    """The :class:`SymmetryPlan` ``source`` is, or the ``.plan`` of a symmetric layer."""
    if isinstance(source, SymmetryPlan):
        return source
    plan = getattr(source, "plan", None)
    if isinstance(plan, SymmetryPlan):
        return plan
    raise type_error(
        argname, source, "a SymmetryPlan or a layer with a `.plan` (e.g. SymmetricConv2d)"
    )


@dataclass(frozen=True, eq=False)
class OrbitPoolSpec(LayerSpec):
    """A symmetric layer's plan and the pooling ``mode`` over each of its orbits.

    Input channels ``plan.out_channels``, output channels ``plan.n_free``: channel ``f``
    pools orbit ``f``; plain channels are orbits of one and pass through, last. Two specs
    are equal when their channel layouts and modes are (plans hold arrays).
    """

    family: ClassVar[str] = "orbit_pool"

    plan: SymmetryPlan
    mode: str = "max"

    def _key(self) -> tuple[object, ...]:
        p = self.plan
        return (p.ndim, p.out_channels, p.groups, p.blocks, self.mode)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OrbitPoolSpec):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def from_torch(cls, layer_or_plan: object, mode: object = "max") -> OrbitPoolSpec:
        """From ``OrbitPool``'s arguments (a plan, or a layer with a ``.plan``)."""
        plan = plan_of(layer_or_plan, "layer_or_plan")
        return cls(plan, check_choice("mode", mode, ORBIT_POOL_MODES))

    @classmethod
    def example(cls, ndim: int | None = None) -> OrbitPoolSpec:
        ndim = 2 if ndim is None else ndim
        return cls(make_plan({"h": 4}, 6, ndim))  # 2 orbits of 2, 2 plain channels

    @property
    def in_channels(self) -> int:
        return self.plan.out_channels

    @property
    def out_channels(self) -> int:
        return self.plan.n_free

    @property
    def spatial_rank(self) -> int:
        return self.plan.ndim

    def example_input_shape(self) -> tuple[int, ...]:
        return (2, self.in_channels, *(5,) * self.plan.ndim)

    def with_in_channels(self, in_channels: int) -> OrbitPoolSpec:
        if check_int("in_channels", in_channels, 1) != self.in_channels:
            raise ValueError(
                f"in_channels={in_channels} is not allowed; it must be the plan's "
                f"out_channels={self.in_channels}"
            )
        return self

    def params(self) -> tuple[ParamLayout, ...]:
        return ()

    def pair_fields(self) -> tuple[PairField, ...]:
        return (
            PairField("symmetry channel layout", self.plan.blocks),
            PairField("mode", self.mode, weights=False),
        )

    def torch_kwargs(self) -> dict[str, Any]:
        return {"layer_or_plan": self.plan, "mode": self.mode}


@dataclass(frozen=True, eq=False)
class GroupPoolSpec(LayerSpec):
    """``GroupPool``'s settings (both frameworks): the input's group, ``mode`` and the
    subgroup ``to`` it keeps (``None``: none), with the cosets table ``(|H|, |G| / |H|)``:
    output member ``i`` of a field pools the input members in row ``i`` (one row of all
    members when ``to`` is ``None``). Any number of fields: ``in_channels`` is ``None``
    (a multiple of ``|G|``, checked on the input). Two specs are equal when their group,
    mode and subgroup are."""

    family: ClassVar[str] = "group_pool"

    group: Group
    mode: str
    to: str | None
    cosets: np.ndarray

    def _key(self) -> tuple[object, ...]:
        return (self.group.key, self.group.ndim, self.mode, self.to)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupPoolSpec):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def from_args(cls, group: object, mode: object = "max", to: object = None) -> GroupPoolSpec:
        grp = make_group(group)
        mode = check_choice("mode", mode, ("max", "mean"))
        if to is None:
            return cls(grp, mode, None, np.arange(grp.order, dtype=np.int64).reshape(1, -1))
        cosets = grp.cosets(to)  # first: its errors name `to` and say "a subgroup of"
        return cls(grp, mode, make_group(to, grp.ndim).key, cosets)

    from_torch = from_args
    from_keras = from_args

    @classmethod
    def example(cls, ndim: int | None = None) -> GroupPoolSpec:
        return cls.from_args("hr", "max", "r")  # D4 -> C4: 2 cosets per output member

    @property
    def in_channels(self) -> None:
        """Always ``None``: the layer pools any number of fields."""
        return None

    @property
    def spatial_rank(self) -> int:
        return self.group.ndim

    def example_input_shape(self) -> tuple[int, ...]:
        return (2, 2 * self.group.order, *(5,) * self.group.ndim)

    def keras_input_shape(self, data_format: str = "channels_last") -> tuple[int | None, ...]:
        """Any shape: the layer has nothing to build from its input's channels."""
        return (None,) * (self.spatial_rank + 2)

    def with_in_channels(self, in_channels: int) -> GroupPoolSpec:
        check_int("in_channels", in_channels, 1)
        return self

    def params(self) -> tuple[ParamLayout, ...]:
        return ()

    def pair_fields(self) -> tuple[PairField, ...]:
        # Not weights, but the twins' outputs differ in shape or meaning: always checked.
        return (
            PairField("group", self.group.key),
            PairField("to", self.to),
            PairField("mode", self.mode, weights=False),
        )

    def torch_kwargs(self) -> dict[str, Any]:
        return {"group": self.group.key, "mode": self.mode, "to": self.to}

    torch_kwargs_from_keras = torch_kwargs

    def keras_kwargs(self, data_format: str = "channels_last") -> dict[str, Any]:
        return {**self.torch_kwargs(), "data_format": data_format}

    @property
    def out_order(self) -> int:
        """Channels per output field: ``|H|``, or 1 when ``to`` is ``None``."""
        return int(self.cosets.shape[0])
