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

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import init

from symconv.core.group_conv import GroupConvSpec, conversion_reason
from symconv.nn._cache import caching_allowed, not_scriptable, tracing, version_key
from symconv.nn._gather import gather

__all__ = ["GroupConv1d", "GroupConv2d", "GroupConv3d"]


class _GroupConvNd:
    """Shared implementation; concrete classes mix it into ``nn.ConvNd``."""

    _ndim: ClassVar[int]
    _plain_cls: ClassVar[type[nn.modules.conv._ConvNd]]

    spec: GroupConvSpec
    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        group: str = "hr",
    ) -> None:
        conv = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "groups": groups,
            "bias": bias,
            "padding_mode": padding_mode,
        }
        spec = GroupConvSpec.from_torch(self._ndim, group=group, **conv)
        self._build(spec, device, dtype)

    @classmethod
    def from_spec(
        cls, spec: GroupConvSpec, *, device: Any = None, dtype: torch.dtype | None = None
    ) -> _GroupConvNd:
        """The layer a (validated) spec describes."""
        if not isinstance(spec, GroupConvSpec) or spec.conv.ndim != cls._ndim:
            raise TypeError(f"spec={spec!r} must be a {cls._ndim}-D GroupConvSpec")
        layer = cls.__new__(cls)
        layer._build(spec, device, dtype)
        return layer

    def _build(self, spec: GroupConvSpec, device: Any, dtype: torch.dtype | None) -> None:
        """``nn.ConvNd``'s construction, then the free parameters in place of the full ones."""
        kwargs = spec.conv.torch_kwargs()
        self._plain_cls.__init__(self, **kwargs, device=device, dtype=dtype)
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.free_weight_shape(), **factory))
        if self.bias is not None:
            self.bias = nn.Parameter(torch.empty(spec.out_fields, **factory))
        # Plain tensors, not buffers: derived from the spec, never saved nor broadcast.
        self._index = torch.from_numpy(spec.gather_index()).to(factory["device"])
        self._bias_index = torch.from_numpy(spec.bias_index()).to(factory["device"])
        self._index_cl: Tensor | None = None
        self._cache: tuple[tuple[object, ...], Tensor, Tensor | None] | None = None
        self.reset_parameters()

    @property
    def group(self) -> str:
        """The group key (``'hr'``, ``'r'``, ``'hv'``, ...)."""
        return self.spec.group.key

    def reset_parameters(self) -> None:
        """``nn.ConvNd``'s initialization on the free parameters: the free kernel has the
        full one's fan-in, so the full kernel has a plain convolution's distribution."""
        if getattr(self, "spec", None) is None:
            return
        with torch.no_grad():
            init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                fan_in = self.weight[0].numel()
                init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget the cached full kernel (needed only after writes through ``.data``)."""
        self._cache = None

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        module = super()._apply(fn, recurse)  # type: ignore[misc]
        # Indices follow the parameters' device but never go through `fn` (`to_empty`).
        self._index = self._index.to(self.weight.device)
        self._bias_index = self._bias_index.to(self.weight.device)
        self._index_cl, self._cache = None, None
        return module

    def _full(self) -> tuple[Tensor, Tensor | None]:
        """The full kernel and bias, computed (differentiably) from the free ones."""
        w = self.weight
        if not tracing() and w.dim() >= 4 and not w.is_contiguous() and _channels_last(w):
            if self._index_cl is None:
                self._index_cl = _storage_order_index(w, self._index)
            full = gather(w.movedim(1, -1), self._index_cl).movedim(-1, 1)
        else:
            full = gather(w, self._index)
        bias = None if self.bias is None else gather(self.bias, self._bias_index)
        return full, bias

    def expanded(self) -> tuple[Tensor, Tensor | None]:
        """``(expanded_weight, expanded_bias)`` as the forward pass uses them."""
        params = (self.weight, self.bias)
        if not caching_allowed(params):
            return self._full()
        key = version_key(params)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, *self._full())
        return self._cache[1], self._cache[2]

    @property
    def expanded_weight(self) -> Tensor:
        """The full kernel ``(out_channels, in_channels / groups, *kernel_size)``."""
        return self.expanded()[0]

    @property
    def expanded_bias(self) -> Tensor | None:
        """The full bias ``(out_channels,)``, or ``None``."""
        return self.expanded()[1]

    def forward(self, input: Tensor) -> Tensor:
        """``(N, in_channels, *spatial)`` -> ``(N, out_channels, *spatial_out)``."""
        weight, bias = self.expanded()
        return self._conv_forward(input, weight, bias)  # type: ignore[attr-defined]

    def to_conv(self) -> nn.modules.conv._ConvNd:
        """A plain ``nn.ConvNd`` holding the full kernel (same outputs, training mode and
        ``requires_grad``)."""
        w = self.weight
        conv = self._plain_cls(**self.spec.conv.torch_kwargs(), device=w.device, dtype=w.dtype)
        with torch.no_grad():
            weight, bias = self._full()
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        conv.train(self.training)  # type: ignore[attr-defined]
        conv.requires_grad_(w.requires_grad)
        return conv

    @classmethod
    def from_conv(cls, conv: nn.Module, group: str = "hr") -> _GroupConvNd:
        """The group convolution closest to a plain ``nn.ConvNd`` (its settings, training
        mode and ``requires_grad``): each free entry is the mean of its ``|G|`` copies in
        ``conv``'s kernel, each bias the mean over its field. A ``conv`` that already is a
        group convolution is reproduced exactly. ``ValueError`` says why one cannot be."""
        if type(conv) is not cls._plain_cls:
            raise TypeError(
                f"{cls.__name__}.from_conv needs a plain nn.{cls._plain_cls.__name__}, got "
                f"{type(conv).__name__}"
            )
        reason = conversion_reason(
            cls._ndim,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.groups,
            group,
            conv.transposed,
        )
        if reason is not None:
            raise ValueError(f"cannot make a {cls.__name__} of {conv}: {reason}")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            conv.weight.device,
            conv.weight.dtype,
            group=group,
        )
        order = layer.spec.group.order
        with torch.no_grad():
            flat = torch.zeros_like(layer.weight).reshape(-1)
            flat.index_add_(0, layer._index.reshape(-1), conv.weight.reshape(-1))
            layer.weight.copy_(flat.reshape(layer.weight.shape) / order)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.reshape(-1, order).mean(1))
        layer.train(conv.training)
        layer.requires_grad_(conv.weight.requires_grad)
        layer.clear_cache()
        return layer

    def __prepare_scriptable__(self) -> nn.Module:
        raise not_scriptable(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group!r}"  # type: ignore[misc]


def _channels_last(weight: Tensor) -> bool:
    fmt = torch.channels_last if weight.dim() == 4 else torch.channels_last_3d
    return weight.dim() in (4, 5) and weight.is_contiguous(memory_format=fmt)


def _storage_order_index(weight: Tensor, index: Tensor) -> Tensor:
    """``index`` rewritten to read the free kernel's channels_last storage and to yield
    the full kernel in its own ``(out, *k, in)`` storage order: no layout copies."""
    offsets = torch.arange(weight.numel(), device=weight.device)
    offsets = offsets.as_strided(weight.shape, weight.stride())  # logical -> storage
    return offsets.reshape(-1)[index].movedim(1, -1).contiguous()


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


class GroupConv1d(_GroupConvNd, nn.Conv1d):
    _ndim = 1
    _plain_cls = nn.Conv1d
    __doc__ = _DOC.format(
        dims=1,
        plain="Conv1d",
        keys="'h'",
        name="GroupConv1d",
        key="h",
        order_in=4,
        order_out=6,
        example_out="((3, 4, 3), (6, 4, 3))",
    )


class GroupConv2d(_GroupConvNd, nn.Conv2d):
    _ndim = 2
    _plain_cls = nn.Conv2d
    __doc__ = _DOC.format(
        dims=2,
        plain="Conv2d",
        keys="'h', 'v', 'hv', 'r', 'hr'",
        name="GroupConv2d",
        key="hr",
        order_in=16,
        order_out=24,
        example_out="((3, 16, 3, 3), (24, 16, 3, 3))",
    )


class GroupConv3d(_GroupConvNd, nn.Conv3d):
    _ndim = 3
    _plain_cls = nn.Conv3d
    __doc__ = _DOC.format(
        dims=3,
        plain="Conv3d",
        key="hvz",
        name="GroupConv3d",
        keys="'h', 'v', 'hv', 'z', 'hz', 'vz', 'hvz'",
        order_in=8,
        order_out=16,
        example_out="((2, 8, 3, 3, 3), (16, 8, 3, 3, 3))",
    )
