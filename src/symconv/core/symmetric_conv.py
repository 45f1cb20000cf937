"""The spec of a reflection-symmetric convolution (``SymmetricConv1d/2d/3d`` and twins).

Parameters (``k`` the kernel size, ``g`` the groups)::

    weight / kernel   torch (plan.n_free, in/g, *k)   Keras (*k, in/g, plan.n_free)
    bias   / bias     (plan.n_bias,)                  only with bias / use_bias
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from symconv.core.conv import ConvGeometry, ConvSpec
from symconv.core.groups import group
from symconv.core.spec import PairField, ParamLayout, kernel_to_keras
from symconv.core.symmetry import (
    SymmetryPlan,
    SymmetrySpec,
    canonical_key,
    letter_axis,
    make_plan,
    parse_symmetry_string,
)

__all__ = ["SymmetricConvSpec", "degenerate_keys"]


@dataclass(frozen=True, eq=False)
class SymmetricConvSpec(ConvSpec):
    """A convolution's geometry plus the symmetry plan of its output channels.

    Two specs are equal when their geometries and channel layouts are (plans hold arrays,
    so they compare by what defines them).
    """

    family: ClassVar[str] = "symmetric"

    conv: ConvGeometry
    plan: SymmetryPlan

    def __post_init__(self) -> None:
        # Rotation keys turn kernels: they need a square kernel and one grid on both axes.
        for block in self.plan.blocks:
            self.conv.check_turnable(group(block.key, self.conv.ndim), "symmetry key")

    def _key(self) -> tuple[object, ...]:
        p = self.plan
        return (self.conv, p.ndim, p.out_channels, p.groups, p.share_bias, p.blocks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SymmetricConvSpec):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def from_torch(
        cls, ndim: int, *, symmetry: SymmetrySpec, share_bias: object, **conv: Any
    ) -> SymmetricConvSpec:
        """From ``nn.ConvNd``'s arguments plus ``symmetry`` and ``share_bias``."""
        geometry = ConvGeometry.from_torch(ndim, **conv)
        return cls(geometry, cls._plan(geometry, symmetry, share_bias))

    @classmethod
    def from_keras(
        cls, ndim: int, *, symmetry: SymmetrySpec, share_bias: object, **conv: Any
    ) -> SymmetricConvSpec:
        """From ``keras.layers.ConvND``'s arguments plus ``symmetry`` and ``share_bias``."""
        geometry = ConvGeometry.from_keras(ndim, **conv)
        return cls(geometry, cls._plan(geometry, symmetry, share_bias))

    @staticmethod
    def _plan(geometry: ConvGeometry, symmetry: SymmetrySpec, share_bias: object) -> SymmetryPlan:
        return make_plan(
            symmetry,
            geometry.out_channels,
            geometry.ndim,
            groups=geometry.groups,
            share_bias=share_bias,  # type: ignore[arg-type]
        )

    @classmethod
    def example(cls, ndim: int | None = None) -> SymmetricConvSpec:
        ndim = 2 if ndim is None else ndim
        symmetry = {1: {"h": 4}, 2: {"h": 2, "v": 2, "hv": 4}, 3: {"hz": 4, "z": 2}}[ndim]
        return cls.from_torch(
            ndim,
            in_channels=3,
            out_channels=10,
            kernel_size=3,
            padding=1,
            symmetry=symmetry,
            share_bias=True,
        )

    def params(self) -> tuple[ParamLayout, ...]:
        c = self.conv
        weight = (self.plan.n_free, c.in_per_group, *c.kernel_size)
        return (
            ParamLayout("weight", "kernel", weight, kernel_to_keras(c.ndim)),
            ParamLayout("bias", "bias", (self.plan.n_bias,), present=c.bias),
        )

    def pair_fields(self) -> tuple[PairField, ...]:
        return (
            *self.conv.pair_fields(),
            PairField("share_bias", self.plan.share_bias),
            PairField("symmetry channel layout", self.plan.blocks),
        )

    def family_kwargs(self) -> dict[str, Any]:
        return {"symmetry": self.plan.spec_dict(), "share_bias": self.plan.share_bias}


def degenerate_keys(
    symmetry: SymmetrySpec, kernel_size: tuple[int, ...]
) -> tuple[dict[object, object], list[str]]:
    """Split ``symmetry`` into the keys worth applying to a kernel and why others are not.

    A reflection along an axis where the kernel has extent 1 maps the kernel to itself, so
    a key flipping such an axis would make orbits of identical copies; a rotation key
    (``r``, ``hr``) is degenerate only for a kernel that is 1x1 in the (height, width)
    plane. Returns the kept part of the spec and one reason per dropped key. Keys that are
    not valid for the kernel's dimensions are kept, for :func:`make_plan` to name the
    problem.
    """
    ndim = len(kernel_size)
    spec = parse_symmetry_string(symmetry) if isinstance(symmetry, str) else dict(symmetry or {})
    kept: dict[object, object] = {}
    dropped: list[str] = []
    for key, value in spec.items():
        try:
            canon = canonical_key(key, ndim)
        except ValueError:
            kept[key] = value
            continue
        if "r" in canon:
            # Turns move a kernel only when it has extent in the plane; a non-square kernel
            # is kept for the layer to name (rotation keys need square kernels).
            if tuple(kernel_size[-2:]) == (1, 1):
                dropped.append(
                    f"key {key!r} not applied: kernel_size={kernel_size} is 1x1 in the turned "
                    "(height, width) plane, which every turn and reflection leaves unchanged, so "
                    "its orbits would hold identical copies (include_degenerate=True applies it)"
                )
            else:
                kept[key] = value
            continue
        flat = [ch for ch in canon if kernel_size[letter_axis(ch, ndim)] == 1]
        if not flat:
            kept[key] = value
            continue
        axes = f"{flat[0]} axis" if len(flat) == 1 else f"{', '.join(flat)} axes"
        dropped.append(
            f"key {key!r} not applied: kernel_size={kernel_size} has extent 1 along the {axes}, "
            "whose reflection leaves the kernel unchanged, so its orbits would hold identical "
            "copies (include_degenerate=True applies it)"
        )
    return kept, dropped
