"""The spec of a group convolution (``GroupConv1d/2d/3d``): group feature maps in and out.

Channels hold *fields*: a field is ``|G|`` adjacent channels, one per group member in the
group's order (:mod:`symconv.core.groups`): field-major, member-minor, the layout a
lifting ``SymmetricConv2d(..., symmetry={key: out_channels})`` produces. Acting on the
input with ``u`` turns field ``f``'s member ``h`` into ``u`` (spatially) of member
``u^-1 h``; the layer commutes with that action.

Output member ``g`` of output field ``o`` uses the free kernel of ``o`` transformed by
``g`` with its input-member axis permuted by ``g^-1``::

    full[o * |G| + g, f * |G| + h] = g(free[o, f * |G| + table[inverse[g], h]])

so the full kernel is one gather from the free one and the work is a plain convolution's.

Parameters (``k`` the kernel size, ``c`` the conv groups, ``O = out_channels / |G|``)::

    weight / kernel   torch (O, in_channels / c, *k)   Keras (*k, in_channels / c, O)
    bias   / bias     (O,)                             one per output field
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from symconv.core.conv import ConvGeometry, ConvSpec, check_turnable
from symconv.core.groups import Group, group
from symconv.core.row_gather import RowGather
from symconv.core.spec import PairField, ParamLayout, kernel_to_keras
from symconv.core.validate import value_error

__all__ = ["GroupConvSpec", "check_fields", "conversion_reason"]


def check_fields(name: str, channels: int, grp: Group, groups: int = 1) -> int:
    """``channels // |G|`` once ``channels`` is whole fields in every conv group."""
    if channels % (grp.order * groups):
        unit = grp.order * groups
        per = f" in each of groups={groups}" if groups > 1 else ""
        raise value_error(
            name,
            channels,
            f"a multiple of {unit}: whole fields of |G|={grp.order} channels "
            f"(group {grp.key!r}){per}",
        )
    return channels // grp.order


def conversion_reason(
    ndim: int,
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, ...],
    groups: int,
    key: object,
    transposed: bool = False,
    *,
    stride: tuple[int, ...],
    padding: str | tuple[int, ...],
    dilation: tuple[int, ...],
    keras: bool = False,
) -> str | None:
    """Why a plain ``nn.ConvNd`` with these settings cannot become a group convolution of
    group ``key`` (``None`` when it can): shared by ``from_conv`` and model conversion."""
    if transposed:
        return "transposed convolutions are not supported"
    try:
        grp = group(key, ndim)
        check_fields("in_channels", in_channels, grp, groups)
        check_fields("out_channels", out_channels, grp, groups)
        check_turnable(grp, kernel_size, stride, padding, dilation, keras=keras)
    except ValueError as error:
        return str(error)
    return None


@dataclass(frozen=True)
class GroupConvSpec(ConvSpec):
    """A convolution's geometry plus the group its input and output fields belong to."""

    family: ClassVar[str] = "group_conv"

    conv: ConvGeometry
    group: Group

    def __post_init__(self) -> None:
        c = self.conv
        if self.group.ndim != c.ndim:
            raise value_error("group", self.group.key, f"a group on {c.ndim} spatial axes")
        c.check_turnable(self.group)
        check_fields("out_channels", c.out_channels, self.group, c.groups)
        if c.in_channels is not None:
            check_fields("in_channels", c.in_channels, self.group, c.groups)

    @classmethod
    def from_torch(cls, ndim: int, *, group: object = "hr", **conv: Any) -> GroupConvSpec:
        """From ``nn.ConvNd``'s arguments plus ``group`` (a key such as ``'hr'``)."""
        geometry = ConvGeometry.from_torch(ndim, **conv)
        return cls(geometry, _group(group, ndim))

    @classmethod
    def from_keras(cls, ndim: int, *, group: object = "hr", **conv: Any) -> GroupConvSpec:
        """From ``keras.layers.ConvND``'s arguments plus ``group`` (messages say
        ``filters``)."""
        geometry = ConvGeometry.from_keras(ndim, **conv)
        grp = _group(group, ndim)
        check_fields("filters", geometry.out_channels, grp, geometry.groups)
        return cls(geometry, grp)

    @classmethod
    def example(cls, ndim: int | None = None) -> GroupConvSpec:
        ndim = 2 if ndim is None else ndim
        key = {1: "h", 2: "hr", 3: "hvz"}[ndim]
        order = group(key, ndim).order
        return cls.from_torch(
            ndim,
            in_channels=2 * order,
            out_channels=3 * order,
            kernel_size=3,
            padding=1,
            group=key,
        )

    # -- sizes -------------------------------------------------------------------------
    @property
    def out_fields(self) -> int:
        return self.conv.out_channels // self.group.order

    def free_weight_shape(self) -> tuple[int, ...]:
        """``(out_fields, in_channels / groups, *kernel_size)`` (torch layout)."""
        return (self.out_fields, self.conv.in_per_group, *self.conv.kernel_size)

    # -- the expansion -----------------------------------------------------------------
    def gather_index(self, layout: str = "torch") -> np.ndarray:
        """Flat indices taking the free kernel to the full one with one gather:
        ``full = free.reshape(-1)[index]``; ``int64`` of the full kernel's shape, torch
        ``(out, in/groups, *k)`` or Keras ``(*k, in/groups, out)``."""
        free_shape = self.free_weight_shape()
        flat = np.arange(math.prod(free_shape), dtype=np.int64).reshape(free_shape)
        if layout == "keras":  # positions in the Keras free kernel, in torch order
            to_keras = kernel_to_keras(self.conv.ndim)
            keras = np.arange(flat.size, dtype=np.int64).reshape([free_shape[i] for i in to_keras])
            flat = np.transpose(keras, np.argsort(to_keras))
        elif layout != "torch":
            raise value_error("layout", layout, "one of ('torch', 'keras')")
        full = self._expand_torch(flat)
        if layout == "keras":
            full = np.transpose(full, kernel_to_keras(self.conv.ndim))
        return np.ascontiguousarray(full)

    def row_gather(self) -> RowGather:
        """The torch gather as rows (:class:`~symconv.core.row_gather.RowGather`): output
        field ``f`` (its ``|G|`` channels) reads free filter ``f`` only, at the same
        offsets for every ``f``, so one field's expansion of one free filter is the whole
        index (``|G| * in_channels / groups * prod(k)`` entries); equal to
        :meth:`gather_index` (torch layout), without building it."""
        row_shape = self.free_weight_shape()[1:]
        one = np.arange(math.prod(row_shape), dtype=np.int64).reshape(1, *row_shape)
        index = self._expand_torch(one).reshape(-1)
        shape = (self.conv.out_channels, *row_shape)
        return RowGather(self.out_fields, math.prod(row_shape), index, shape)

    def _expand_torch(self, free: np.ndarray) -> np.ndarray:
        """The definition, on any array of the free kernel's torch shape."""
        grp, n = self.group, self.group.order
        fields_in = free.shape[1] // n
        by_member = free.reshape(free.shape[0], fields_in, n, *free.shape[2:])
        members = []
        for g in range(n):
            moved = by_member[:, :, grp.table[grp.inverse[g]]]  # input member h <- g^-1 h
            members.append(grp.apply(moved, g, first_axis=3))
        full = np.stack(members, axis=1)  # (O, |G|, F, |G|, *k)
        return full.reshape(free.shape[0] * n, free.shape[1], *free.shape[2:])

    def expand(self, free: np.ndarray) -> np.ndarray:
        """The full torch kernel for a free torch kernel (numpy reference of backends)."""
        return self._expand_torch(np.asarray(free))

    def project(self, full: np.ndarray) -> np.ndarray:
        """The free kernel whose expansion is closest to ``full`` (torch layout): the mean
        of its ``|G|`` copies, each with its member's action undone."""
        index = self.gather_index().reshape(-1)
        sums = np.zeros(index.max() + 1, dtype=np.result_type(full, np.float64))
        np.add.at(sums, index, np.asarray(full).reshape(-1))
        return (sums / self.group.order).astype(full.dtype).reshape(self.free_weight_shape())

    def bias_index(self) -> np.ndarray:
        """``(out_channels,)``: output channel ``c`` uses free bias ``c // |G|``."""
        return np.arange(self.conv.out_channels, dtype=np.int64) // self.group.order

    # -- the contract ------------------------------------------------------------------
    def params(self) -> tuple[ParamLayout, ...]:
        return (
            ParamLayout(
                "weight", "kernel", self.free_weight_shape(), kernel_to_keras(self.conv.ndim)
            ),
            ParamLayout("bias", "bias", (self.out_fields,), present=self.conv.bias),
        )

    def pair_fields(self) -> tuple[PairField, ...]:
        return (*self.conv.pair_fields(), PairField("group", self.group.key))

    def family_kwargs(self) -> dict[str, Any]:
        return {"group": self.group.key}


def _group(key: object, ndim: int) -> Group:
    return key if isinstance(key, Group) and key.ndim == ndim else group(key, ndim)
