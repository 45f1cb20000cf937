"""symconv: convolution layers with built-in geometric priors.

Exports are loaded on first use (PEP 562), so ``import symconv`` imports nothing heavy:
torch and numpy load with the first layer used, optional dependencies (keras, tensorflow,
matplotlib, ...) only where they are needed. Keras layers live in :mod:`symconv.keras`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from symconv._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # the framework-agnostic plan
    "SymmetryPlan": "symconv.symmetry",
    "make_plan": "symconv.symmetry",
    "parse_symmetry_string": "symconv.symmetry",
    # torch layers
    "SymmetricConv1d": "symconv.nn.symmetric",
    "SymmetricConv2d": "symconv.nn.symmetric",
    "SymmetricConv3d": "symconv.nn.symmetric",
    "OrbitConv2d": "symconv.nn.orbit",
    "OrbitPool": "symconv.nn.orbit",
    "flip_permutation": "symconv.nn.orbit",
    "ConvTwist": "symconv.nn.twist",
    "GlobalConv1d": "symconv.nn.global_conv",
    "TopKPool": "symconv.nn.pooling",
    "GroupConv1d": "symconv.nn.group_conv",
    "GroupConv2d": "symconv.nn.group_conv",
    "GroupConv3d": "symconv.nn.group_conv",
    "GroupPool": "symconv.nn.group_pool",
    "GroupBatchNorm1d": "symconv.nn.group_norm",
    "GroupBatchNorm2d": "symconv.nn.group_norm",
    "GroupBatchNorm3d": "symconv.nn.group_norm",
    # checking exactness
    "equivariance_error": "symconv.equivariance",
    "member_permutation": "symconv.core.symmetry",
    # model surgery
    "convert": "symconv.conversion",
    "ConversionReport": "symconv.conversion",
    "name_matches": "symconv.conversion",
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
    from symconv.core.symmetry import member_permutation
    from symconv.equivariance import equivariance_error
    from symconv.nn.global_conv import GlobalConv1d
    from symconv.nn.group_conv import GroupConv1d, GroupConv2d, GroupConv3d
    from symconv.nn.group_norm import GroupBatchNorm1d, GroupBatchNorm2d, GroupBatchNorm3d
    from symconv.nn.group_pool import GroupPool
    from symconv.nn.orbit import OrbitConv2d, OrbitPool, flip_permutation
    from symconv.nn.pooling import TopKPool
    from symconv.nn.symmetric import SymmetricConv1d, SymmetricConv2d, SymmetricConv3d
    from symconv.nn.twist import ConvTwist
    from symconv.symmetry import SymmetryPlan, make_plan, parse_symmetry_string
