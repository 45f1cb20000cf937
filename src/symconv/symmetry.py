"""The reflection-symmetry plan (public name of :mod:`symconv.core.symmetry`)."""

from symconv.core.symmetry import (
    KEY_ORDER,
    OrbitBlock,
    SymmetryPlan,
    SymmetrySpec,
    allowed_keys,
    canonical_key,
    count_for,
    letter_axis,
    make_plan,
    member_permutation,
    parse_symmetry_string,
)

__all__ = [
    "KEY_ORDER",
    "OrbitBlock",
    "SymmetryPlan",
    "SymmetrySpec",
    "allowed_keys",
    "canonical_key",
    "count_for",
    "letter_axis",
    "make_plan",
    "member_permutation",
    "parse_symmetry_string",
]
