"""Group convolutions (p4, p4m and the reflection groups): group feature maps in and out.

``GroupConv1d/2d/3d`` are ``nn.ConvNd`` subclasses whose input and output channels are
*fields* of ``|G|`` channels (field-major, member-minor; see
:mod:`symconv.core.group_conv`). Acting on the input with a group member ``u`` (turning or
reflecting the image and permuting each field's members, :func:`symconv.equivariance.act`)
acts on the output the same way.

Shapes (``k`` the kernel size, ``c`` the conv groups, ``|G|`` the group order)::

    weight           (out_channels / |G|, in_channels / c, *k)   free kernel (a Parameter)
    bias             (out_channels / |G|,)                        one per output field
    expanded_weight  (out_channels, in_channels / c, *k)          the kernel the conv uses
    input            (N, in_channels, *spatial)
    output           (N, out_channels, *spatial_out)

The full kernel is one gather from the free one (:mod:`symconv.nn._gather`), so a step
costs what a plain convolution's does; with no gradient to the parameters it is cached
(:mod:`symconv.nn._cache`): ``torch.no_grad``/``inference_mode`` costs a plain forward.
Writes through ``param.data`` bypass the cache key: call :meth:`clear_cache` after them.

Exactness: with stride 1 (or sizes the stride divides after padding, on every axis), equal
stride, padding and dilation on the turned axes, ``layer(act(x, u)) == act(layer(x), u)``
up to rounding, for every member ``u`` and any padding mode.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from symconv.core.group_conv import GroupConvSpec, conversion_reason
from symconv.core.groups import DEFAULT_GROUP
from symconv.nn.conv_utils import copy_mode, geometry_of
from symconv.nn.gathered import GatheredConvNd

__all__ = ["GroupConv1d", "GroupConv2d", "GroupConv3d", "GroupConvNd"]


class GroupConvNd(GatheredConvNd):
    """The shared implementation; ``GroupConv1d/2d/3d`` mix it into ``nn.ConvNd``."""

    _ndim: ClassVar[int]
    _plain_cls: ClassVar[type[nn.modules.conv._ConvNd]]

    spec: GroupConvSpec
    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self, *args: Any, group: str | None = None, **kwargs: Any) -> None:
        """``nn.ConvNd``'s arguments (``in_channels, out_channels, kernel_size, stride,
        padding, dilation, groups, bias, padding_mode, device, dtype``) plus ``group``."""
        super().__init__(*args, group=group, **kwargs)

    @classmethod
    def _spec_from_torch(cls, conv: dict[str, Any], *, group: str | None) -> GroupConvSpec:
        key = DEFAULT_GROUP[cls._ndim] if group is None else group
        return GroupConvSpec.from_torch(cls._ndim, group=key, **conv)

    @classmethod
    def from_spec(
        cls, spec: GroupConvSpec, *, device: Any = None, dtype: torch.dtype | None = None
    ) -> GroupConvNd:
        """The layer a (validated) spec describes."""
        if not isinstance(spec, GroupConvSpec) or spec.conv.ndim != cls._ndim:
            raise TypeError(f"spec={spec!r} must be a {cls._ndim}-D GroupConvSpec")
        layer = cls.__new__(cls)
        layer._build(spec, device, dtype)
        return layer

    def _install(self, spec: GroupConvSpec) -> None:
        self.set_free(
            spec.free_weight_shape(), spec.out_fields, spec.row_gather(), spec.bias_index()
        )

    @property
    def group(self) -> str:
        """The group key (``'hr'``, ``'r'``, ``'hv'``, ...)."""
        return self.spec.group.key

    @classmethod
    def from_conv(cls, conv: nn.Module, group: str | None = None) -> GroupConvNd:
        """The group convolution closest to a plain ``nn.ConvNd`` (its settings, training
        mode and ``requires_grad``): each free entry is the mean of its ``|G|`` copies in
        ``conv``'s kernel, each bias the mean over its field. A ``conv`` that already is a
        group convolution is reproduced exactly. ``ValueError`` says why one cannot be."""
        if type(conv) is not cls._plain_cls:
            raise TypeError(
                f"{cls.__name__}.from_conv needs a plain nn.{cls._plain_cls.__name__}, got "
                f"{type(conv).__name__}"
            )
        group = DEFAULT_GROUP[cls._ndim] if group is None else group
        reason = conversion_reason(
            cls._ndim,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.groups,
            group,
            conv.transposed,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
        )
        if reason is not None:
            raise ValueError(f"cannot make a {cls.__name__} of {conv}: {reason}")
        spec = GroupConvSpec.from_torch(cls._ndim, group=group, **geometry_of(conv).torch_kwargs())
        layer = cls.from_spec(spec, device=conv.weight.device, dtype=conv.weight.dtype)
        layer._fit_to(conv)
        copy_mode(conv, layer)
        return layer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group!r}"  # type: ignore[misc]


_DOC = """{dims}-D group convolution: fields of |G| channels in, fields out.

    A drop-in ``nn.{plain}`` (its arguments, with ``in_channels`` and ``out_channels``
    multiples of ``|G|`` times ``groups``) plus ``group``: a key of
    :mod:`symconv.core.groups` ({keys}). ``kernel_size`` must be square for rotation
    keys. See :mod:`symconv.nn.group_conv` for shapes and exactness.

    Example::

        >>> layer = {name}({order_in}, {order_out}, 3, padding=1, group={key!r})
        >>> tuple(layer.weight.shape), tuple(layer.expanded_weight.shape)
        {example_out}
    """


_EXAMPLES = {  # ndim: (keys, example key, in, out, free shape, full shape)
    1: ("'h'", "h", 4, 6, (3, 4, 3), (6, 4, 3)),
    2: ("'h', 'v', 'hv', 'r', 'hr'", "hr", 16, 24, (3, 16, 3, 3), (24, 16, 3, 3)),
    3: ("'h', 'v', 'hv', 'z', 'hz', 'vz', 'hvz'", "hvz", 8, 16, (2, 8, 3, 3, 3), (16, 8, 3, 3, 3)),
}


def _doc(ndim: int) -> str:
    keys, key, cin, cout, free, full = _EXAMPLES[ndim]
    return _DOC.format(
        dims=ndim, plain=f"Conv{ndim}d", keys=keys, name=f"GroupConv{ndim}d", key=key,
        order_in=cin, order_out=cout, example_out=(free, full),
    )  # fmt: skip


class GroupConv1d(GroupConvNd, nn.Conv1d):
    _ndim = 1
    _plain_cls = nn.Conv1d
    __doc__ = _doc(1)


class GroupConv2d(GroupConvNd, nn.Conv2d):
    _ndim = 2
    _plain_cls = nn.Conv2d
    __doc__ = _doc(2)


class GroupConv3d(GroupConvNd, nn.Conv3d):
    _ndim = 3
    _plain_cls = nn.Conv3d
    __doc__ = _doc(3)
