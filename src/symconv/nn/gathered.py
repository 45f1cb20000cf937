"""The base of convolutions whose kernel is one gather from free parameters.

A subclass (mixed into ``nn.ConvNd``) calls :meth:`GatheredConvNd.set_free` once with the
free parameter shapes and the gather indices its core spec computed; this base provides
the rest: the differentiable expansion (:func:`symconv.nn._gather.gather`, over the
indices factored into rows by :class:`symconv.core.row_gather.RowGather`), a
channels_last path that gathers storage to storage, the cache used when no gradient can
reach the parameters (:mod:`symconv.nn._cache`), device moves, ``forward`` and
``to_conv``.

Shapes: ``expanded_weight`` is ``(out_channels, in_channels / groups, *kernel_size)``,
``expanded_bias`` ``(out_channels,)``; ``weight`` and ``bias`` are whatever the free
shapes are.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.fx
from torch import Tensor, nn
from torch.nn import init

from symconv._lazy import ConstructorSignature
from symconv.core.row_gather import RowGather
from symconv.nn._cache import caching_allowed, not_scriptable, tracing, version_key
from symconv.nn._gather import gather
from symconv.nn._inputs import check_tensor
from symconv.nn.conv_utils import copy_mode

# FX graphs call the check on the real input instead of testing the proxy.
torch.fx.wrap("check_tensor")

__all__ = ["GatheredConvNd"]


class GatheredConvNd:
    """Kernel and bias gathered from free parameters, cached when nothing trains them.

    Writes through ``param.data`` bypass the cache key: call :meth:`clear_cache` after them.
    """

    _ndim: ClassVar[int]
    _plain_cls: ClassVar[type[nn.modules.conv._ConvNd]]

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
        *extra: Any,
        **options: Any,
    ) -> None:
        """``nn.ConvNd``'s arguments plus the family's keyword-only ``options`` (e.g.
        ``symmetry``/``share_bias`` or ``group``), all validated by the family's spec
        before ``nn.ConvNd`` allocates anything."""
        allowed = _family_options(type(self))
        if extra:  # the family's options passed by position after nn.ConvNd's own
            raise TypeError(
                f"{type(self).__name__}() takes at most 11 positional arguments "
                f"(nn.{self._plain_cls.__name__}'s), got {11 + len(extra)}; pass "
                f"{' and '.join(allowed)} by keyword"
            )
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
        for name in options:
            if name not in allowed:
                raise TypeError(
                    f"{type(self).__name__}() got an unexpected keyword argument {name!r}; "
                    f"beyond nn.{self._plain_cls.__name__}'s arguments it takes "
                    f"{', '.join(allowed)}"
                )
        self._build(self._spec_from_torch(conv, **options), device, dtype)

    # help() and inspect.signature(SymmetricConv2d) show nn.ConvNd's arguments and the
    # family's keywords, though the family's __init__ passes them on as *args.
    __signature__ = ConstructorSignature(__init__)

    @classmethod
    def _spec_from_torch(cls, conv: dict[str, Any], **options: Any) -> Any:
        """The family's spec from ``nn.ConvNd``'s arguments and the family's options."""
        raise NotImplementedError

    def _install(self, spec: Any) -> None:
        """Put the family's free parameters in place (a call to :meth:`set_free`)."""
        raise NotImplementedError

    def _build(
        self, spec: Any, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> None:
        """``nn.ConvNd``'s construction from a validated spec, then the free parameters."""
        self._plain_cls.__init__(self, **spec.conv.torch_kwargs(), device=device, dtype=dtype)  # type: ignore[misc]
        self.spec = spec
        self._install(spec)

    def set_free(
        self, weight_shape: tuple[int, ...], bias_size: int,
        index: np.ndarray | RowGather | None, bias_index: np.ndarray | None,
    ) -> None:  # fmt: skip
        """Replace ``nn.ConvNd``'s full parameters by free ones and initialize them.

        ``index``: the full kernel's flat index into the free one (factored into rows
        here), or the family's :class:`~symconv.core.row_gather.RowGather` when its spec
        builds the rows directly.

        ``index``/``bias_index`` ``None``: the free parameter already is the full one (no
        gather, e.g. a symmetric layer without symmetric channels, or unshared biases).
        """
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        if self.bias is not None:
            self.bias = nn.Parameter(torch.empty(bias_size, **factory))
        self._set_gather(index, bias_index)
        self._free_ready = True
        self.reset_parameters()

    def _set_gather(
        self, index: np.ndarray | RowGather | None, bias_index: np.ndarray | None
    ) -> None:
        """Install the gathers ``weight.reshape(-1)[index]`` and ``bias[bias_index]``
        (``index`` shaped like the full kernel), each factored into rows."""
        self._weight_rows = _rows_of(index, self.weight.numel())
        self._bias_rows = None if self.bias is None else _rows_of(bias_index, self.bias.numel())
        device = self.weight.device
        # Plain tensors, not buffers: derived data, never saved nor broadcast by DDP.
        self._index = _index_tensor(self._weight_rows, device)
        self._bias_index = _index_tensor(self._bias_rows, device)
        self._channels_last_gather: tuple[RowGather, Tensor] | None = None
        self._cache: tuple[tuple[object, ...], Tensor, Tensor | None] | None = None

    def gather_index(self) -> Tensor | None:
        """The full kernel's flat index into the free one, ``(out_channels, in_channels /
        groups, *kernel_size)`` int64 (``expanded_weight == weight.reshape(-1)[index]``), or
        ``None`` when the free kernel is the full one. Built on demand: the layer keeps
        only its row factorization."""
        return _flat_index_tensor(self._weight_rows, self.weight.device)

    def bias_gather_index(self) -> Tensor | None:
        """``expanded_bias == bias[index]`` with this ``(out_channels,)`` index, or ``None``
        when the bias is not gathered (absent, or unshared)."""
        return _flat_index_tensor(self._bias_rows, self.weight.device)

    def reset_parameters(self) -> None:
        """``nn.ConvNd``'s initialization, on the free parameters: the free kernel has the
        full one's fan-in, so the full kernel has a plain convolution's distribution."""
        if not getattr(self, "_free_ready", False):
            return  # nn.ConvNd.__init__ calls this before the free parameters exist
        with torch.no_grad():
            init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(self.weight[0].numel())
                init.uniform_(self.bias, -bound, bound)
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget the cached full kernel."""
        self._cache = None

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        module = super()._apply(fn, recurse)  # type: ignore[misc]
        # Indices follow the parameters' device but never go through `fn` (`to_empty`);
        # rebuilt from the plan, so a layer made on the meta device gets real ones.
        device = self.weight.device
        self._index = _index_tensor(self._weight_rows, device)
        self._bias_index = _index_tensor(self._bias_rows, device)
        self._channels_last_gather, self._cache = None, None
        return module

    def _full(self) -> tuple[Tensor, Tensor | None]:
        """The full kernel and bias, computed (differentiably) from the free ones."""
        w, bias = self.weight, self.bias
        rows = self._weight_rows
        if rows is None or self._index is None:
            full = w
        elif not tracing() and w.dim() >= 4 and not w.is_contiguous() and _channels_last(w):
            if self._channels_last_gather is None:
                rows_cl = _storage_order_rows(w, rows)
                self._channels_last_gather = rows_cl, _index_tensor(rows_cl, w.device)
            rows_cl, index_cl = self._channels_last_gather
            full = gather(w.movedim(1, -1), index_cl, rows_cl.rows, rows_cl.shape).movedim(-1, 1)
        else:
            full = gather(w, self._index, rows.rows, rows.shape)
        brows = self._bias_rows
        if bias is not None and brows is not None and self._bias_index is not None:
            bias = gather(bias, self._bias_index, brows.rows, brows.shape)
        return full, bias

    def expanded(self) -> tuple[Tensor, Tensor | None]:
        """``(expanded_weight, expanded_bias)`` as the forward pass uses them."""
        params = (self.weight, self.bias)
        if self._index is None and self._bias_index is None:
            return params
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
        check_tensor(input, type(self).__name__)  # torch's own error names conv2d()
        weight, bias = self.expanded()
        return self._conv_forward(input, weight, bias)  # type: ignore[attr-defined]

    def _fit_to(self, conv: nn.modules.conv._ConvNd) -> None:
        """Set the free parameters to the projection of ``conv``'s full ones (``conv``
        has this layer's shapes): each free entry the mean of the full entries gathered
        from it, the adjoint of the gather divided by the multiplicities. That is the
        least-squares fit, so a kernel that already has the structure is reproduced
        exactly."""
        with torch.no_grad():
            self.weight.copy_(_mean_of_copies(conv.weight, self.gather_index(), self.weight))
            if self.bias is not None and conv.bias is not None:
                self.bias.copy_(_mean_of_copies(conv.bias, self.bias_gather_index(), self.bias))
        self.clear_cache()

    def to_conv(self) -> nn.modules.conv._ConvNd:
        """A plain ``nn.ConvNd`` holding the full kernel: same outputs, training mode and
        ``requires_grad``."""
        w = self.weight
        conv = self._plain_cls(**self.spec.conv.torch_kwargs(), device=w.device, dtype=w.dtype)  # type: ignore[attr-defined]
        with torch.no_grad():
            weight, bias = self._full()
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        copy_mode(self, conv)  # type: ignore[arg-type]
        return conv

    def __prepare_scriptable__(self) -> nn.Module:
        raise not_scriptable(self)


def _family_options(cls: type) -> tuple[str, ...]:
    """The keyword-only options of a family's ``_spec_from_torch`` (``group``, or
    ``symmetry`` and ``share_bias``)."""
    parameters = inspect.signature(cls._spec_from_torch).parameters.values()  # type: ignore[attr-defined]
    return tuple(p.name for p in parameters if p.kind == p.KEYWORD_ONLY)


def _mean_of_copies(full: Tensor, index: Tensor | None, free: Tensor) -> Tensor:
    """``free``-shaped means of the entries of ``full`` that ``full == free.reshape(-1)[index]``
    copies from each free entry (``index`` ``None``: the free tensor is the full one).

    Taken as one copy plus the mean deviation from it, so equal copies give that value
    bit for bit (a plain sum of ``n`` equal values rounds, e.g. ``3 x``).
    """
    if index is None:
        return full.detach().clone()
    index = index.to(full.device).reshape(-1)
    flat = full.detach().reshape(-1)
    n = free.numel()
    positions = torch.arange(flat.numel(), device=flat.device)
    first = positions.new_full((n,), flat.numel()).scatter_reduce_(0, index, positions, "amin")
    reference = flat[first]
    deviations = flat.new_zeros(n).index_add_(0, index, flat - reference[index])
    counts = flat.new_zeros(n).index_add_(0, index, torch.ones_like(flat))
    return (reference + deviations / counts).reshape(free.shape)


def _rows_of(index: np.ndarray | RowGather | None, source_size: int) -> RowGather | None:
    if index is None or isinstance(index, RowGather):
        return index
    return RowGather.of(np.asarray(index), source_size)


def _index_tensor(rows: RowGather | None, device: torch.device) -> Tensor | None:
    if rows is None:
        return None
    return torch.from_numpy(np.array(rows.index, dtype=np.int64)).to(device)  # a writable copy


def _flat_index_tensor(rows: RowGather | None, device: torch.device) -> Tensor | None:
    return None if rows is None else torch.from_numpy(rows.flat()).to(device)


def _channels_last(weight: Tensor) -> bool:
    fmt = torch.channels_last if weight.dim() == 4 else torch.channels_last_3d
    return weight.dim() in (4, 5) and weight.is_contiguous(memory_format=fmt)


def _storage_order_rows(weight: Tensor, rows: RowGather) -> RowGather:
    """The gather rewritten to read the free kernel's channels_last storage and to yield
    the full kernel in its own ``(out, *k, in)`` storage order: no layout copies. Both
    storages keep each out-channel block contiguous, so it factors into rows again."""
    offsets = np.arange(weight.numel(), dtype=np.int64)
    strides = tuple(s * offsets.itemsize for s in weight.stride())
    storage = np.lib.stride_tricks.as_strided(offsets, tuple(weight.shape), strides)
    flat = np.moveaxis(storage.reshape(-1)[rows.flat()], 1, -1)  # logical -> storage
    return RowGather.of(np.ascontiguousarray(flat), weight.numel())
