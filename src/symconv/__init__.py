"""symconv: convolution layers with built-in geometric priors.

Exports are loaded on first use (PEP 562), so ``import symconv`` imports nothing heavy:
torch and numpy load with the first layer used, optional dependencies (keras, tensorflow,
matplotlib, ...) only where they are needed. Keras layers live in :mod:`symconv.keras`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from symconv._lazy import lazy_exports
from symconv.nn import LAYER_MODULES

__version__ = "0.1.0"

_EXPORTS = {
    "symconv.symmetry": ("SymmetryPlan", "make_plan", "parse_symmetry_string"),
    **LAYER_MODULES,
    "symconv.equivariance": ("equivariance_error",),
    "symconv.conversion": ("convert", "ConversionReport", "name_matches"),
}

__all__ = [  # noqa: RUF022 - every name of _EXPORTS
    "ConvTwist",
    "ConversionReport",
    "GlobalConv1d",
    "GroupBatchNorm1d",
    "GroupBatchNorm2d",
    "GroupBatchNorm3d",
    "GroupConv1d",
    "GroupConv2d",
    "GroupConv3d",
    "GroupPool",
    "OrbitConv2d",
    "OrbitPool",
    "SymmetricConv1d",
    "SymmetricConv2d",
    "SymmetricConv3d",
    "SymmetryPlan",
    "TopKPool",
    "__version__",
    "convert",
    "equivariance_error",
    "flip_permutation",
    "make_plan",
    "member_permutation",
    "name_matches",
    "parse_symmetry_string",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from symconv.conversion import ConversionReport, convert, name_matches
    from symconv.equivariance import equivariance_error
    from symconv.nn.global_conv import GlobalConv1d
    from symconv.nn.group_conv import GroupConv1d, GroupConv2d, GroupConv3d
    from symconv.nn.group_norm import GroupBatchNorm1d, GroupBatchNorm2d, GroupBatchNorm3d
    from symconv.nn.group_pool import GroupPool
    from symconv.nn.orbit import OrbitConv2d, OrbitPool, flip_permutation, member_permutation
    from symconv.nn.pooling import TopKPool
    from symconv.nn.symmetric import SymmetricConv1d, SymmetricConv2d, SymmetricConv3d
    from symconv.nn.twist import ConvTwist
    from symconv.symmetry import SymmetryPlan, make_plan, parse_symmetry_string
