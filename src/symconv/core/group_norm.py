"""The spec of group batch normalization: one statistic and affine map per field.

The ``|G|`` members of a field are one feature seen in ``|G|`` poses, so they share a
mean, a variance, a scale and an offset; the layers normalize field ``f`` over the batch,
the spatial axes and its ``|G|`` channels (``F = channels / |G|`` fields). Both
frameworks' layers (:class:`symconv.nn.group_norm.GroupBatchNorm2d`,
:class:`symconv.keras.group_norm.GroupBatchNormalization`) are built from this spec.

The two frameworks name and count the same things differently; the spec stores torch's
conventions and converts Keras' at the boundary:

- ``momentum``: torch's weight of the new batch statistic, ``running = (1 - m) running +
  m batch`` (``None``: a cumulative average); Keras' ``momentum`` is ``1 - m``.
- ``eps`` is Keras' ``epsilon``; ``affine`` is Keras' ``center`` and ``scale`` (which
  Keras may set apart: the spec keeps both).
- The running variance: torch updates it with the unbiased batch variance, Keras with the
  biased one. Outputs never depend on it in training, and in inference they use the
  stored value, so copied statistics give equal outputs; the updates differ by
  ``n / (n - 1)`` for ``n`` values per field.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from symconv.core.group_conv import check_fields
from symconv.core.groups import DEFAULT_GROUP, Group
from symconv.core.groups import group as make_group
from symconv.core.spec import LayerSpec, PairField, ParamLayout
from symconv.core.validate import check_bool, check_int, check_real, type_error, value_error

__all__ = ["GroupBatchNormSpec"]


def _momentum(name: str, value: object, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    allowed = "a number from 0 to 1" + (", or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(name, value, allowed)
    if not 0 <= float(value) <= 1:  # NaN fails too
        raise value_error(name, value, allowed)
    return float(value)


def _flip_momentum(momentum: float) -> float:
    """``1 - momentum`` (one framework's convention to the other's), rounded to 12 decimals
    so that 0.9 gives 0.1, not 0.09999999999999998."""
    return round(1.0 - momentum, 12)


@dataclass(frozen=True)
class GroupBatchNormSpec(LayerSpec):
    """Group batch norm's settings (both frameworks).

    ``ndim`` (spatial axes) and ``channels`` are ``None`` in a spec made for a Keras
    layer before it is built; ``momentum`` is torch's (see the module).
    """

    family: ClassVar[str] = "group_batch_norm"

    group: Group
    ndim: int | None
    channels: int | None
    eps: float
    momentum: float | None
    center: bool
    scale: bool
    track_running_stats: bool

    def __post_init__(self) -> None:
        if self.channels is not None:
            check_fields("channels", self.channels, self.group)

    @classmethod
    def from_torch(
        cls,
        ndim: int,
        channels: object,
        group: object = None,
        eps: object = 1e-5,
        momentum: object = 0.1,
        affine: object = True,
        track_running_stats: object = True,
    ) -> GroupBatchNormSpec:
        """``GroupBatchNorm{ndim}d``'s arguments, validated."""
        ndim = check_int("ndim", ndim, 1, 3)
        grp = make_group(DEFAULT_GROUP[ndim] if group is None else group, ndim)
        affine = check_bool("affine", affine)
        return cls(
            grp,
            ndim,
            check_int("channels", channels, 1),
            check_real("eps", eps, 0.0),
            _momentum("momentum", momentum, allow_none=True),
            affine,
            affine,
            check_bool("track_running_stats", track_running_stats),
        )

    @classmethod
    def from_keras(
        cls,
        group: object = "hr",
        momentum: object = 0.99,
        epsilon: object = 1e-3,
        center: object = True,
        scale: object = True,
    ) -> GroupBatchNormSpec:
        """``GroupBatchNormalization``'s arguments, validated (``momentum`` Keras'); the
        input's rank and channels come at build (:meth:`with_input`)."""
        keras_momentum = _momentum("momentum", momentum, allow_none=False)
        return cls(
            make_group(group),
            None,
            None,
            check_real("epsilon", epsilon, 0.0, exclusive=True),
            _flip_momentum(keras_momentum),  # type: ignore[arg-type]
            check_bool("center", center),
            check_bool("scale", scale),
            True,
        )

    @classmethod
    def example(cls, ndim: int | None = None) -> GroupBatchNormSpec:
        ndim = 2 if ndim is None else ndim
        return cls.from_torch(ndim, 2 * make_group(DEFAULT_GROUP[ndim], ndim).order)

    def with_input(self, ndim: int, channels: int) -> GroupBatchNormSpec:
        """This spec for an input with ``ndim`` spatial axes and ``channels`` channels."""
        ndim = check_int("ndim", ndim, 1, 3)
        grp = make_group(self.group.key, ndim)  # the key must act on that many axes
        return replace(self, group=grp, ndim=ndim, channels=check_int("channels", channels, 1))

    def with_in_channels(self, in_channels: int) -> GroupBatchNormSpec:
        if self.ndim is None:
            raise ValueError("the input's rank is not known yet: use with_input(ndim, channels)")
        return self.with_input(self.ndim, in_channels)

    # -- shapes ------------------------------------------------------------------------
    @property
    def in_channels(self) -> int | None:
        return self.channels

    @property
    def fields(self) -> int | None:
        """``channels / |G|``: the number of statistics and affine maps."""
        return None if self.channels is None else self.channels // self.group.order

    @property
    def spatial_rank(self) -> int | None:  # type: ignore[override]
        """``ndim``; ``None`` before a Keras layer is built."""
        return self.ndim

    def example_input_shape(self) -> tuple[int, ...]:
        if self.ndim is None or self.channels is None:
            raise ValueError("the input's rank and channels are not known yet")
        return (2, self.channels, *(4,) * self.ndim)

    @property
    def affine(self) -> bool:
        """torch's ``affine``: ``center`` and ``scale`` together."""
        if self.center != self.scale:
            raise ValueError(
                f"center={self.center} with scale={self.scale} has no torch equivalent: "
                "GroupBatchNorm's one affine flag sets both"
            )
        return self.center

    # -- the contract ------------------------------------------------------------------
    def params(self) -> tuple[ParamLayout, ...]:
        shape = (self.fields or 0,)
        stats = self.track_running_stats
        return (
            ParamLayout("weight", "gamma", shape, present=self.scale),
            ParamLayout("bias", "beta", shape, present=self.center),
            ParamLayout("running_mean", "moving_mean", shape, present=stats, trainable=False),
            ParamLayout("running_var", "moving_variance", shape, present=stats, trainable=False),
        )

    def pair_fields(self) -> tuple[PairField, ...]:
        momentum = None if self.momentum is None else round(self.momentum, 12)
        return (
            PairField("channels", self.channels),
            PairField("spatial axes", self.ndim),
            PairField("group", self.group.key),
            PairField("center", self.center),
            PairField("scale", self.scale),
            PairField("track_running_stats", self.track_running_stats),
            PairField("eps/epsilon", self.eps, weights=False),
            PairField("momentum (torch's; Keras' is 1 - it)", momentum, weights=False),
        )

    def torch_kwargs(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "group": self.group.key,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "track_running_stats": self.track_running_stats,
        }

    torch_kwargs_from_keras = torch_kwargs

    def keras_kwargs(self, data_format: str = "channels_last") -> dict[str, Any]:
        if self.momentum is None:
            raise ValueError(
                "momentum=None (a cumulative average) has no Keras equivalent: Keras' "
                "BatchNormalization keeps an exponential moving average"
            )
        if not self.track_running_stats:
            raise ValueError(
                "track_running_stats=False has no Keras equivalent: Keras' "
                "BatchNormalization always keeps moving statistics"
            )
        if self.eps <= 0:
            raise ValueError(f"eps={self.eps} has no Keras equivalent: Keras' epsilon must be > 0")
        return {
            "group": self.group.key,
            "axis": 1 if data_format == "channels_first" else -1,
            "momentum": _flip_momentum(self.momentum),
            "epsilon": self.eps,
            "center": self.center,
            "scale": self.scale,
        }
