"""Symmetry spec keys and values: spelling, the keys a layer accepts, counts and percentages.

Part of the plan (:mod:`symconv.core.symmetry`, which re-exports these names).
A key names the generators of the orbit's group (:mod:`symconv.core.groups`):

==========  ===============================  ==========  ===========
key         axes flipped by the generators   orbit size  layer dims
==========  ===============================  ==========  ===========
``h``       width (left-right)               2           1-D, 2-D, 3-D
``v``       height (up-down)                 2           2-D, 3-D
``hv``      width, height                    4           2-D, 3-D
``z``       depth                            2           3-D
``hz``      width, depth                     4           3-D
``vz``      height, depth                    4           3-D
``hvz``     width, height, depth             8           3-D
``r``       quarter turns (C4)               4           2-D
``hr``      quarter turns and width (D4)     8           2-D
==========  ===============================  ==========  ===========

In a 1-D layer ``h`` flips the length axis.  Letters may be given in any order
(``'vh'`` is ``'hv'``; ``'vr'`` is ``'hr'``).  Rotation keys need square kernels.

**Values** are integer channel counts, which must be whole numbers of orbits, or
percentage strings of ``out_channels`` such as ``'50%'`` or ``'12.5%'``.  A percentage is
rounded *down* to a whole number of orbits: ``'50%'`` of 10 channels with key ``hv``
gives one quadruple (4 channels), not 5.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from fractions import Fraction

from symconv.core.groups import canonical_group_key

__all__ = [
    "KEY_ORDER",
    "SymmetrySpec",
    "allowed_keys",
    "canonical_key",
    "count_for",
    "letter_axis",
    "letters_for_ndim",
    "parse_symmetry_string",
]

#: Letters in generator order; their bit in an orbit member's index follows this order.
_LETTERS = ("h", "v", "z")
#: The canonical order of keys in the channel layout.
KEY_ORDER = ("h", "v", "hv", "z", "hz", "vz", "hvz", "r", "hr")
_ROTATION_KEYS = ("r", "hr")
#: What a user may pass as ``symmetry=``.
SymmetrySpec = Mapping[str, "int | str"] | str | None

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def letters_for_ndim(ndim: int) -> tuple[str, ...]:
    return _LETTERS[: min(ndim, 3)]


def allowed_keys(ndim: int, *, rotations: bool = False) -> tuple[str, ...]:
    """The reflection keys a layer with ``ndim`` spatial dimensions accepts, in canonical
    order; with ``rotations=True`` also the rotation keys (``r``, ``hr``: 2-D only)."""
    letters = set(letters_for_ndim(ndim))
    keys = tuple(k for k in KEY_ORDER if set(k) <= letters)
    return keys + (_ROTATION_KEYS if rotations and ndim == 2 else ())


def letter_axis(letter: str, ndim: int) -> int:
    """Index among the ``ndim`` spatial axes that ``letter`` flips.

    ``h`` is the last spatial axis (width), ``v`` the one before (height), ``z`` the
    first of three (depth): for a torch ``(N, C, D, H, W)`` tensor, spatial axis ``i``
    is tensor dim ``2 + i``.
    """
    return ndim - 1 - _LETTERS.index(letter)


def canonical_key(key: object, ndim: int) -> str:
    """Normalize a spec key (``'vh'`` -> ``'hv'``), or raise ``ValueError`` naming it."""
    allowed = allowed_keys(ndim, rotations=True)
    if not isinstance(key, str):
        raise ValueError(
            f"symmetry key {key!r} is not a string; allowed keys for a {ndim}-D layer: "
            f"{', '.join(map(repr, allowed))}"
        )
    letters = key.strip().lower()
    if "r" in letters and len(set(letters)) == len(letters):
        return _rotation_key(key, ndim, allowed)
    if (
        not letters
        or any(ch not in _LETTERS for ch in letters)
        or len(set(letters)) != len(letters)
    ):
        raise ValueError(
            f"unknown symmetry key {key!r}; allowed keys for a {ndim}-D layer: "
            f"{', '.join(map(repr, allowed))}"
        )
    canon = "".join(ch for ch in _LETTERS if ch in letters)
    if canon not in allowed:
        missing = [ch for ch in canon if ch not in letters_for_ndim(ndim)]
        raise ValueError(
            f"symmetry key {key!r} needs the {'/'.join(missing)} axis, which a {ndim}-D layer "
            f"lacks; allowed keys for a {ndim}-D layer: {', '.join(map(repr, allowed))}"
        )
    return canon


def _rotation_key(key: str, ndim: int, allowed: tuple[str, ...]) -> str:
    words = ", ".join(map(repr, allowed))
    try:
        canon = canonical_group_key(key)
    except ValueError:
        raise ValueError(
            f"unknown symmetry key {key!r}; allowed keys for a {ndim}-D layer: {words}"
        ) from None
    if ndim != 2:
        raise ValueError(
            f"symmetry key {key!r} turns the (height, width) plane, which only a 2-D layer has; "
            f"allowed keys for a {ndim}-D layer: {words}"
        )
    return canon


def parse_symmetry_string(text: str) -> dict[str, str | int]:
    """Parse the command-line form ``'hv:50%,h:2'`` into ``{'hv': '50%', 'h': 2}``.

    An empty string or ``'none'`` gives ``{}``.
    """
    if not isinstance(text, str):
        raise TypeError(f"symmetry string must be a str, got {type(text).__name__}")
    text = text.strip()
    if text.lower() in ("", "none"):
        return {}
    spec: dict[str, str | int] = {}
    for item in text.split(","):
        key, sep, value = item.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(
                f"symmetry item {item.strip()!r} in {text!r} is malformed; expected KEY:COUNT "
                "or KEY:PERCENT%, e.g. 'hv:50%,h:2'"
            )
        if key in spec:
            raise ValueError(f"symmetry key {key!r} appears twice in {text!r}")
        # Signed integers are counts, so '-4' gets the dict form's "negative" message.
        spec[key] = int(value) if _INTEGER.match(value) else value
    return spec


def count_for(key: str, value: object, orbit_size: int, out_channels: int) -> int:
    """Channel count of one spec entry ``key: value`` (validated), in whole orbits."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | str):
        raise ValueError(
            f"symmetry[{key!r}] = {value!r} is not allowed: give a non-negative integer count "
            f"(a multiple of the orbit size {orbit_size}) or a percentage string such as '50%'"
        )
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            raise ValueError(
                f"symmetry[{key!r}] = {value!r} is not a percentage; write it as e.g. '50%' or "
                f"'12.5%' (0-100), or give an integer count"
            )
        pct = Fraction(match.group(1))
        if pct > 100:
            raise ValueError(f"symmetry[{key!r}] = {value!r} is outside 0%-100%")
        # Round down to whole orbits: a percentage never over-commits channels.
        return math.floor(pct * out_channels / 100 / orbit_size) * orbit_size
    count = int(value)
    if count < 0:
        raise ValueError(f"symmetry[{key!r}] = {count} is negative; counts must be >= 0")
    if count % orbit_size:
        raise ValueError(
            f"symmetry[{key!r}] = {count} is not a multiple of the orbit size {orbit_size} "
            f"(key {key!r} makes orbits of {orbit_size} channels); use "
            f"{count // orbit_size * orbit_size} or {(count // orbit_size + 1) * orbit_size}"
        )
    return count
