"""Reflection-symmetric convolutions: weight sharing *between* filters.

``SymmetricConv1d/2d/3d`` are drop-in replacements for ``nn.Conv1d/2d/3d``. A
``symmetry`` spec (see :mod:`symconv.symmetry`) says which output channels come in
orbits of reflected copies of one free filter; only the free filters are parameters.

Shapes (``k`` the kernel size, ``g`` the groups)::

    weight           (plan.n_free, in_channels / g, *k)    free filters (a Parameter)
    bias             (plan.n_bias,)                        free biases (a Parameter) or None
    expanded_weight  (out_channels, in_channels / g, *k)   the kernel the convolution uses
    expanded_bias    (out_channels,)
    input            (N, in_channels, *spatial)
    output           (N, out_channels, *spatial_out)

The expanded kernel is one gather from the free one (an index computed once per layer),
differentiable, so every optimiser step, DDP gradient sync and ``torch.nn.init`` call acts
on the free parameters. When no gradient can reach the parameters (``torch.no_grad``,
``torch.inference_mode``, or frozen parameters) the expanded kernel is cached, so inference
costs what a plain convolution costs; the cache is keyed on the parameters' identity,
storage and version counter, so in-place optimiser steps, ``load_state_dict``, ``.to()``
and ``torch.nn.init`` invalidate it. Writes through ``param.data`` bypass the version
counter: call :meth:`clear_cache` after those.

Under ``torch.jit.trace``, ``torch.fx`` symbolic tracing and ONNX export the expansion is
recorded as a plain ``index_select`` (so a traced model saves with ``torch.jit.save``);
``torch.jit.script`` is not supported and says so.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import init

from symconv.core.symmetric_conv import SymmetricConvSpec
from symconv.core.symmetry import SymmetryPlan, SymmetrySpec
from symconv.nn._cache import caching_allowed, not_scriptable, tracing, version_key
from symconv.nn._gather import gather
from symconv.nn.conv_utils import copy_mode, geometry_of

__all__ = ["SymmetricConv1d", "SymmetricConv2d", "SymmetricConv3d", "SymmetricConvNd"]


class SymmetricConvNd:
    """The shared implementation; ``SymmetricConv1d/2d/3d`` mix it into ``nn.ConvNd``.

    ``isinstance(layer, SymmetricConvNd)`` tells a symmetric layer of any dimension.
    """

    _ndim: ClassVar[int]
    _plain_cls: ClassVar[type[nn.modules.conv._ConvNd]]

    spec: SymmetricConvSpec
    plan: SymmetryPlan
    weight: nn.Parameter
    bias: nn.Parameter | None

    def _setup_symmetry(self, plan: SymmetryPlan) -> None:
        """Swap the full parameters ``nn.ConvNd`` made for the free ones."""
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.plan = plan
        in_per_group = self.in_channels // self.groups
        self.weight = nn.Parameter(
            torch.empty(plan.free_weight_shape(in_per_group, self.kernel_size), **factory)
        )
        if self.bias is not None:
            self.bias = nn.Parameter(torch.empty(plan.n_bias, **factory))
        # Plain tensors, not buffers: buffers would be broadcast by DDP on every forward
        # and saved in state_dict; these are derived from the plan, moved in `_apply`.
        # On the parameters' device from the start: `_apply` only runs on a later `.to()`.
        device = factory["device"]
        self._gather_index = (
            None
            if plan.is_trivial
            else torch.from_numpy(plan.gather_index(in_per_group, self.kernel_size)).to(device)
        )
        self._bias_index = (
            torch.from_numpy(plan.bias_index.copy()).to(device) if plan.share_bias else None
        )
        self._gather_index_cl: Tensor | None = None  # built on first channels_last use
        self._cache: tuple[tuple[Any, ...], Tensor, Tensor | None] | None = None
        self.reset_parameters()

    # -- parameters ----------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Initialise the free parameters exactly as ``nn.ConvNd`` does its full ones.

        The free kernel has the full kernel's fan-in, so the expanded kernel has the
        same per-entry distribution as a plain convolution's.
        """
        if getattr(self, "plan", None) is None:
            return  # called by nn.ConvNd.__init__ before the free parameters exist
        with torch.no_grad():
            init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(self.bias, -bound, bound)
        self.clear_cache()

    def clear_cache(self) -> None:
        """Drop the cached expanded kernel (needed only after writes through ``.data``)."""
        self._cache = None

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        module = super()._apply(fn, recurse)  # type: ignore[misc]
        # Follow the parameters to their device; never pass integer indices through `fn`
        # (``to_empty`` would fill them with garbage).
        device = self.weight.device
        if self._gather_index is not None:
            self._gather_index = self._gather_index.to(device)
        if self._bias_index is not None:
            self._bias_index = self._bias_index.to(device)
        self._gather_index_cl = None
        self._cache = None
        return module

    # -- expansion -----------------------------------------------------------------------
    def _expand(self) -> tuple[Tensor, Tensor | None]:
        weight, bias = self.weight, self.bias
        if self._gather_index is None:
            full_w = weight
        elif self._is_channels_last(weight):
            full_w = self._expand_channels_last(weight)
        else:
            full_w = gather(weight, self._gather_index)
        if bias is None or self._bias_index is None:
            return full_w, bias
        return full_w, gather(bias, self._bias_index)

    @staticmethod
    def _is_channels_last(weight: Tensor) -> bool:
        # Traced graphs take the layout-agnostic gather (FX proxies have no layout at all).
        if tracing() or weight.dim() not in (4, 5) or weight.is_contiguous():
            return False
        fmt = torch.channels_last if weight.dim() == 4 else torch.channels_last_3d
        return weight.is_contiguous(memory_format=fmt)

    def _expand_channels_last(self, weight: Tensor) -> Tensor:
        """Gather straight from and into channels_last storage: no layout copies.

        cuDNN and oneDNN would otherwise copy a contiguous kernel to the input's
        channels_last layout on every call (and ``reshape(-1)`` would copy the free one).
        """
        if self._gather_index_cl is None:
            # Storage position of every logical element of the free kernel, then the
            # full kernel's indices in the (out, *k, in) order of its own storage.
            n, cin, *k = weight.shape
            pos = torch.arange(weight.numel(), device=weight.device).reshape(n, *k, cin)
            pos = pos.movedim(-1, 1).reshape(-1)
            self._gather_index_cl = pos[self._gather_index].movedim(1, -1).contiguous()
        storage_order = weight.movedim(1, -1).reshape(-1)  # a view for channels_last
        return gather(storage_order, self._gather_index_cl).movedim(-1, 1)

    def expanded(self) -> tuple[Tensor, Tensor | None]:
        """``(expanded_weight, expanded_bias)`` as the forward pass uses them."""
        if self._gather_index is None and (self.bias is None or self._bias_index is None):
            return self.weight, self.bias
        params = (self.weight, self.bias)
        if not caching_allowed(params):
            return self._expand()
        key = version_key(params)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                w, b = self._expand()
            self._cache = (key, w, b)
        return self._cache[1], self._cache[2]

    @property
    def expanded_weight(self) -> Tensor:
        """The full kernel ``(out_channels, in_channels / groups, *kernel_size)``."""
        return self.expanded()[0]

    @property
    def expanded_bias(self) -> Tensor | None:
        """The full bias ``(out_channels,)``, or ``None`` without bias."""
        return self.expanded()[1]

    def forward(self, input: Tensor) -> Tensor:
        """``(N, in_channels, *spatial)`` -> ``(N, out_channels, *spatial_out)``."""
        weight, bias = self.expanded()
        return self._conv_forward(input, weight, bias)  # type: ignore[attr-defined]

    # -- conversion ----------------------------------------------------------------------
    def __prepare_scriptable__(self) -> nn.Module:
        raise not_scriptable(self)

    def to_conv(self) -> nn.modules.conv._ConvNd:
        """A plain ``nn.ConvNd`` with the expanded kernel: same outputs, for deployment.

        It keeps this layer's training mode and ``requires_grad`` (so, e.g.,
        ``torch.nn.utils.fusion.fuse_conv_bn_eval`` accepts it from a model in eval mode).
        """
        conv = self._plain_cls(
            **self.spec.conv.torch_kwargs(), device=self.weight.device, dtype=self.weight.dtype
        )
        with torch.no_grad():
            weight, bias = self._expand()
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        copy_mode(self, conv)  # type: ignore[arg-type]
        return conv

    @classmethod
    def from_conv(
        cls, conv: nn.Module, symmetry: SymmetrySpec, share_bias: bool = True
    ) -> SymmetricConvNd:
        """A symmetric layer with ``conv``'s hyper-parameters and the closest symmetric weights.

        Each free filter is the average of its orbit's members with their reflection
        undone (the least-squares projection), so a ``conv`` that already has the
        symmetry is reproduced exactly. The layer keeps ``conv``'s training mode and
        ``requires_grad``. Raises ``ValueError`` when the spec does not fit.
        """
        if not isinstance(conv, cls._plain_cls) or isinstance(conv, SymmetricConvNd):
            raise TypeError(
                f"{cls.__name__}.from_conv needs a plain nn.{cls._plain_cls.__name__}, got "
                f"{type(conv).__name__}"
            )
        if conv.transposed:  # pragma: no cover - ConvNd classes are never transposed
            raise TypeError("transposed convolutions are not supported")
        spec = SymmetricConvSpec.from_torch(
            cls._ndim,
            **geometry_of(conv).torch_kwargs(),
            symmetry=symmetry,
            share_bias=share_bias,
        )
        layer = cls.from_spec(spec, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(layer._project(conv.weight, layer._gather_index, layer.plan.n_free))
            if conv.bias is not None:
                if layer._bias_index is None:
                    layer.bias.copy_(conv.bias)
                else:
                    layer.bias.copy_(
                        layer._project(conv.bias, layer._bias_index, layer.plan.n_bias)
                    )
        copy_mode(conv, layer)
        layer.clear_cache()
        return layer

    @classmethod
    def from_spec(
        cls,
        spec: SymmetricConvSpec,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SymmetricConvNd:
        """The layer a :class:`~symconv.core.symmetric_conv.SymmetricConvSpec` describes
        (freshly initialized)."""
        if not isinstance(spec, SymmetricConvSpec) or spec.conv.ndim != cls._ndim:
            raise TypeError(
                f"{cls.__name__}.from_spec needs a {cls._ndim}-D SymmetricConvSpec, got {spec!r}"
            )
        return cls(**spec.torch_kwargs(), device=device, dtype=dtype)

    @staticmethod
    def _project(full: Tensor, index: Tensor | None, n_rows: int) -> Tensor:
        """Adjoint of the gather divided by the multiplicities: the orbit average."""
        if index is None:
            return full.detach().clone()
        index = index.to(full.device).reshape(-1)
        flat = full.detach().reshape(-1)
        size = n_rows * (full.numel() // full.shape[0])
        sums = flat.new_zeros(size).index_add_(0, index, flat)
        counts = flat.new_zeros(size).index_add_(0, index, torch.ones_like(flat))
        return (sums / counts).reshape(n_rows, *full.shape[1:])

    def extra_repr(self) -> str:
        spec = ", ".join(f"{k!r}: {v!r}" for k, v in self.plan.spec)
        base = super().extra_repr()  # type: ignore[misc]
        return f"{base}, symmetry={{{spec}}}, share_bias={self.plan.share_bias}"


def _make_init(ndim: int):  # type: ignore[no-untyped-def]
    def __init__(  # noqa: N807 - assigned as a method
        self: SymmetricConvNd,
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
        symmetry: SymmetrySpec = None,
        share_bias: bool = True,
    ) -> None:
        # Validate everything before nn.ConvNd allocates anything.
        spec = SymmetricConvSpec.from_torch(
            ndim,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            symmetry=symmetry,
            share_bias=share_bias,
        )
        self._plain_cls.__init__(self, **spec.conv.torch_kwargs(), device=device, dtype=dtype)
        self.spec = spec
        self._setup_symmetry(spec.plan)

    return __init__


_DOC = """{dims}-D convolution whose output channels share weights across reflections.

    A drop-in replacement for ``nn.{plain}``: every argument of ``nn.{plain}`` plus

    Args:
        symmetry: which output channels are reflected copies of a free filter, e.g.
            ``{example}``: counts (whole orbits) or percentage strings of
            ``out_channels`` (rounded down to whole orbits). Keys: {keys}. ``None`` or
            ``{{}}`` gives a plain convolution. The channel layout is ``layer.plan``.
        share_bias: one bias per orbit (default; makes the layer exactly
            flip-equivariant) or, when ``False``, a free bias per output channel.

    Shapes: input ``(N, C_in, {sp})``, output ``(N, C_out, {sp_out})``; ``weight`` is the
    free kernel ``(plan.n_free, C_in / groups, {k})``; ``expanded_weight`` the full one.

    Equivariance: for odd kernels, symmetric padding and sizes the stride divides
    (``(L + 2 * padding - dilation * (k - 1) - 1) % stride == 0`` on the flipped axes),
    ``layer(x.flip(axis))[:, c] == layer(x).flip(axis)[:, perm[c]]`` for every channel of
    an orbit whose key contains the axis, with ``perm`` from
    :func:`symconv.flip_permutation`.

    Example::

        >>> layer = {name}(8, 16, 3, padding=1, symmetry={example})
        >>> layer.plan.n_free, tuple(layer.expanded_weight.shape[:2])
        {example_out}
    """


#: Per dimension: the plain class, a doc example and its output, the keys, the shapes.
_DOC_ARGS = {
    1: ("{'h': 8}", "(12, (16, 8))", "'h' (the length axis)", "L", "k"),
    2: (
        "{'h': 2, 'v': 4, 'hv': 8}",
        "(7, (16, 8))",
        "'h' (width), 'v' (height), 'hv'",
        "H, W",
        "kH, kW",
    ),
    3: (
        "{'hvz': 8, 'hz': 4}",
        "(6, (16, 8))",
        "'h' (width), 'v' (height), 'z' (depth), 'hv', 'hz', 'vz', 'hvz'",
        "D, H, W",
        "kD, kH, kW",
    ),
}


def _doc(ndim: int) -> str:
    example, example_out, keys, spatial, k = _DOC_ARGS[ndim]
    return _DOC.format(
        dims=ndim,
        plain=f"Conv{ndim}d",
        example=example,
        keys=keys,
        sp=spatial,
        sp_out=", ".join(f"{axis}_out" for axis in spatial.split(", ")),
        k=k,
        name=f"SymmetricConv{ndim}d",
        example_out=example_out,
    )


class SymmetricConv1d(SymmetricConvNd, nn.Conv1d):
    _ndim, _plain_cls, __init__, __doc__ = 1, nn.Conv1d, _make_init(1), _doc(1)


class SymmetricConv2d(SymmetricConvNd, nn.Conv2d):
    _ndim, _plain_cls, __init__, __doc__ = 2, nn.Conv2d, _make_init(2), _doc(2)


class SymmetricConv3d(SymmetricConvNd, nn.Conv3d):
    _ndim, _plain_cls, __init__, __doc__ = 3, nn.Conv3d, _make_init(3), _doc(3)
