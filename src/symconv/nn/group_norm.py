"""Batch normalization of group feature maps: one statistic and affine per field.

The members of a field are one feature seen in ``|G|`` poses, so they share a mean, a
variance and an affine map; normalizing them together keeps a network exactly
equivariant in training (batch statistics) and in eval (running statistics).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.fx
from torch import Tensor, nn

from symconv.core.group_norm import GroupBatchNormSpec
from symconv.core.validate import type_error
from symconv.nn._cache import not_scriptable
from symconv.nn._inputs import in_layout_of
from symconv.nn.group_pool import check_fields_input

__all__ = ["GroupBatchNorm1d", "GroupBatchNorm2d", "GroupBatchNorm3d"]


def check_norm_input(input: Tensor, channels: int, order: int, name: str, dims: int) -> Tensor:
    """``input`` itself, once it is ``(N, channels, *spatial)`` with ``dims`` dims in all."""
    input = check_fields_input(input, order, name, dims)
    if input.shape[1] != channels:
        raise ValueError(
            f"{name}(channels={channels}) expects input of shape (N, {channels}, ...), got "
            f"{tuple(input.shape)}"
        )
    return input


# FX graphs call the shape check instead of tracing into it.
torch.fx.wrap("check_norm_input")
torch.fx.wrap("in_layout_of")  # a wrap holds only in the module that calls it


class _GroupBatchNorm:
    """``nn.BatchNormNd`` over ``F`` fields: the input ``(N, F * |G|, S0, *rest)`` is
    normalized as ``(N, F, |G| * S0, *rest)`` (a view for contiguous inputs). Settings
    are validated and kept by the spec (:class:`~symconv.core.group_norm.GroupBatchNormSpec`)."""

    _ndim: ClassVar[int]
    spec: GroupBatchNormSpec

    def __init__(
        self,
        channels: int,
        group: str | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        spec = GroupBatchNormSpec.from_torch(
            self._ndim, channels, group, eps, momentum, affine, track_running_stats
        )
        self._build(spec, device, dtype)

    def _build(self, spec: GroupBatchNormSpec, device: Any, dtype: Any) -> None:
        super().__init__(  # type: ignore[call-arg]
            spec.fields,
            spec.eps,
            spec.momentum,
            spec.affine,
            spec.track_running_stats,
            device=device,
            dtype=dtype,
        )
        self.spec = spec

    @classmethod
    def from_spec(
        cls, spec: GroupBatchNormSpec, *, device: Any = None, dtype: Any = None
    ) -> _GroupBatchNorm:
        """The layer a (validated) spec describes."""
        if not isinstance(spec, GroupBatchNormSpec):
            raise type_error("spec", spec, "a GroupBatchNormSpec")
        if spec.ndim is None or spec.channels is None:
            raise ValueError(
                "spec has no input rank and channels yet (an unbuilt Keras layer's): build "
                "the layer first"
            )
        if spec.ndim != cls._ndim:
            raise ValueError(
                f"spec is for {spec.ndim} spatial axes; {cls.__name__} takes {cls._ndim} (use "
                f"GroupBatchNorm{spec.ndim}d)"
            )
        layer = cls.__new__(cls)
        layer._build(spec, device, dtype)
        return layer

    @property
    def group(self) -> str:
        """The group key (``'hr'``, ``'r'``, ``'hv'``, ...)."""
        return self.spec.group.key

    @property
    def channels(self) -> int:
        """``F * |G|``: the input's channels."""
        return self.spec.channels  # type: ignore[return-value]

    @property
    def order(self) -> int:
        """``|G|``: channels per field."""
        return self.spec.group.order

    def forward(self, input: Tensor) -> Tensor:
        """``(N, channels, *spatial)`` -> the same shape."""
        input = check_norm_input(
            input, self.channels, self.order, type(self).__name__, self._ndim + 2
        )
        stacked = input.unflatten(1, (-1, self.order)).flatten(2, 3)  # (N, F, |G| * S0, ...)
        out = super().forward(stacked)  # type: ignore[misc]
        return in_layout_of(out.unflatten(2, (self.order, -1)).flatten(1, 2), input)

    def __prepare_scriptable__(self) -> nn.Module:
        raise not_scriptable(self)

    def _check_input_dim(self, input: Tensor) -> None:
        """Done by :meth:`forward` before reshaping (``nn.BatchNormNd``'s own check would
        stop ``torch.fx`` tracing)."""

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, group={self.group!r}, eps={self.eps}, "  # type: ignore[attr-defined]
            f"momentum={self.momentum}, affine={self.affine}, "  # type: ignore[attr-defined]
            f"track_running_stats={self.track_running_stats}"  # type: ignore[attr-defined]
        )


class GroupBatchNorm1d(_GroupBatchNorm, nn.BatchNorm1d):
    """Batch norm of 1-D group feature maps ``(N, F * |G|, L)`` (see the module)."""

    _ndim = 1


class GroupBatchNorm2d(_GroupBatchNorm, nn.BatchNorm2d):
    """Batch norm of 2-D group feature maps ``(N, F * |G|, H, W)``: one mean, variance,
    weight and bias per field (``num_features = channels / |G|``), shared by its members."""

    _ndim = 2


class GroupBatchNorm3d(_GroupBatchNorm, nn.BatchNorm3d):
    """Batch norm of 3-D group feature maps ``(N, F * |G|, D, H, W)`` (see the module)."""

    _ndim = 3
