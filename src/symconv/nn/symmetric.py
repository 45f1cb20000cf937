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
differentiable, so every optimizer step, DDP gradient sync and ``torch.nn.init`` call acts
on the free parameters. When no gradient can reach the parameters (``torch.no_grad``,
``torch.inference_mode``, or frozen parameters) the expanded kernel is cached, so inference
costs what a plain convolution costs; the cache is keyed on the parameters' identity,
storage and version counter, so in-place optimizer steps, ``load_state_dict``, ``.to()``
and ``torch.nn.init`` invalidate it. Writes through ``param.data`` bypass the version
counter: call :meth:`clear_cache` after those.

Under ``torch.jit.trace``, ``torch.fx`` symbolic tracing and ONNX export the expansion is
recorded as a plain ``index_select`` (so a traced model saves with ``torch.jit.save``);
``torch.jit.script`` is not supported and says so.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from symconv.core.symmetric_conv import SymmetricConvSpec
from symconv.core.symmetry import SymmetryPlan, SymmetrySpec
from symconv.nn.conv_utils import copy_mode, geometry_of
from symconv.nn.gathered import GatheredConvNd

__all__ = ["SymmetricConv1d", "SymmetricConv2d", "SymmetricConv3d", "SymmetricConvNd"]


class SymmetricConvNd(GatheredConvNd):
    """The shared implementation; ``SymmetricConv1d/2d/3d`` mix it into ``nn.ConvNd``.

    ``isinstance(layer, SymmetricConvNd)`` tells a symmetric layer of any dimension. The
    gather, its cache, channels_last, ``forward`` and ``to_conv`` come from
    :class:`~symconv.nn.gathered.GatheredConvNd`.
    """

    _ndim: ClassVar[int]
    _plain_cls: ClassVar[type[nn.modules.conv._ConvNd]]

    spec: SymmetricConvSpec
    plan: SymmetryPlan
    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self, *args: Any, symmetry: SymmetrySpec = None, share_bias: bool = True, **kwargs: Any
    ) -> None:
        """``nn.ConvNd``'s arguments (``in_channels, out_channels, kernel_size, stride,
        padding, dilation, groups, bias, padding_mode, device, dtype``) plus ``symmetry``
        and ``share_bias``."""
        super().__init__(*args, symmetry=symmetry, share_bias=share_bias, **kwargs)

    @classmethod
    def _spec_from_torch(
        cls, conv: dict[str, Any], *, symmetry: SymmetrySpec = None, share_bias: bool = True
    ) -> SymmetricConvSpec:
        return SymmetricConvSpec.from_torch(
            cls._ndim, **conv, symmetry=symmetry, share_bias=share_bias
        )

    def _install(self, spec: SymmetricConvSpec) -> None:
        """Swap the full parameters ``nn.ConvNd`` made for the free ones."""
        plan = spec.plan
        self.plan = plan
        in_per_group = self.in_channels // self.groups
        index = None if plan.is_trivial else plan.gather_index(in_per_group, self.kernel_size)
        self.set_free(
            plan.free_weight_shape(in_per_group, self.kernel_size),
            plan.n_bias,
            index,
            plan.bias_index if plan.share_bias else None,
        )

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
        layer._fit_to(conv)
        copy_mode(conv, layer)
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

    def extra_repr(self) -> str:
        spec = ", ".join(f"{k!r}: {v!r}" for k, v in self.plan.spec)
        base = super().extra_repr()  # type: ignore[misc]
        return f"{base}, symmetry={{{spec}}}, share_bias={self.plan.share_bias}"


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
    _ndim, _plain_cls, __doc__ = 1, nn.Conv1d, _doc(1)


class SymmetricConv2d(SymmetricConvNd, nn.Conv2d):
    _ndim, _plain_cls, __doc__ = 2, nn.Conv2d, _doc(2)


class SymmetricConv3d(SymmetricConvNd, nn.Conv3d):
    _ndim, _plain_cls, __doc__ = 3, nn.Conv3d, _doc(3)
