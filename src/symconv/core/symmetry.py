"""The symmetry plan: a symmetry spec parsed once, framework-agnostic.

A spec such as ``{'h': 2, 'v': '25%', 'hv': 8, 'r': '50%'}`` says how many output
channels of a convolution come in orbits of reflected (or turned) copies of one *free*
filter.  A key names the generators of the orbit's group (``h``, ``v``, ``hv``, ``z``,
``hz``, ``vz``, ``hvz``, ``r`` = C4, ``hr`` = D4; :mod:`symconv.core.groups`); keys and
values are spelled as :mod:`symconv.core.symmetry_keys` says.

**Channel layout** (exposed as :class:`SymmetryPlan`): keys in the canonical order
``h, v, hv, z, hz, vz, hvz, r, hr``; within a key, orbits one after another with the
members of an orbit adjacent; within an orbit, the members in the group's order
(:mod:`symconv.core.groups`): binary order of the generators for reflection keys (for
``hv``: identity, h, v, hv), ``e, r, r2, r3`` for ``r`` and ``e, r, r2, r3, h, rh, r2h,
r3h`` for ``hr``.  Member ``g`` of an orbit is the free filter acted on by ``g``;
channels not covered by the spec ("plain" filters) last.  Free filter ``f`` is orbit
``f``; the plain channels are orbits of size one, so ``plan.free_index`` is also the
orbit index of every output channel.

Nothing here imports a deep-learning framework: the PyTorch and Keras layers are thin
backends over :func:`make_plan` and :meth:`SymmetryPlan.gather_index`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from symconv.core.groups import group
from symconv.core.plan import OrbitBlock, SymmetryPlan, readonly
from symconv.core.symmetry_keys import (
    KEY_ORDER,
    SymmetrySpec,
    allowed_keys,
    canonical_key,
    count_for,
    letter_axis,
    parse_symmetry_string,
)
from symconv.core.validate import check_bool, check_divisible, check_int

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


def member_permutation(plan: SymmetryPlan, g: object) -> tuple[np.ndarray, np.ndarray]:
    """``plan.member_permutation(g)``: the channel permutation ``g`` on the input induces."""
    return plan.member_permutation(g)


def make_plan(
    symmetry: SymmetrySpec,
    out_channels: int,
    ndim: int,
    groups: int = 1,
    share_bias: bool = True,
) -> SymmetryPlan:
    """Parse and validate ``symmetry`` for a layer; raise ``ValueError`` naming what is wrong.

    Args:
        symmetry: mapping key -> count or percentage, a string ``'hv:50%,h:2'``, or
            ``None``/``{}`` for a plain convolution.
        out_channels: the layer's output channels (``filters`` in Keras).
        ndim: spatial dimensions of the layer (1, 2 or 3).
        groups: the convolution's groups; an orbit may not straddle two groups.
        share_bias: one bias per orbit (exact equivariance) or one per channel.
    """
    if isinstance(ndim, bool) or not isinstance(ndim, numbers.Integral) or ndim not in (1, 2, 3):
        raise ValueError(f"ndim={ndim!r}; allowed: 1, 2, 3")
    out_channels = check_int("out_channels", out_channels, 1)
    groups = check_int("groups", groups, 1)
    check_divisible("out_channels", out_channels, "groups", groups)
    share_bias = check_bool("share_bias", share_bias)
    counts, given = _channel_counts(symmetry, out_channels, ndim)
    blocks = _blocks(counts, ndim, out_channels, groups)
    return _plan_arrays(
        blocks,
        ndim=int(ndim),
        out_channels=out_channels,
        groups=groups,
        share_bias=share_bias,
        spec=tuple((k, given[k]) for k in KEY_ORDER if k in given),
    )


def _channel_counts(
    symmetry: SymmetrySpec, out_channels: int, ndim: int
) -> tuple[dict[str, int], dict[str, object]]:
    """``(channels per canonical key, the value the user gave per canonical key)``."""
    if symmetry is None:
        symmetry = {}
    elif isinstance(symmetry, str):
        symmetry = parse_symmetry_string(symmetry)
    elif not isinstance(symmetry, Mapping):
        raise TypeError(
            f"symmetry={symmetry!r} must be a dict such as {{'hv': '50%', 'h': 2}}, a string "
            f"such as 'hv:50%,h:2', or None; got {type(symmetry).__name__}"
        )
    counts: dict[str, int] = {}
    given: dict[str, object] = {}
    for raw_key, value in symmetry.items():
        key = canonical_key(raw_key, ndim)
        if key in counts:
            raise ValueError(f"symmetry key {raw_key!r} repeats key {key!r}")
        counts[key] = count_for(raw_key, value, group(key, ndim).order, out_channels)
        given[key] = value
    total = sum(counts.values())
    if total > out_channels:
        detail = ", ".join(f"{k}: {n}" for k, n in counts.items())
        raise ValueError(
            f"symmetry={dict(symmetry)!r} asks for {total} channels ({detail}) but the layer "
            f"has out_channels={out_channels}"
        )
    return counts, given


def _blocks(
    counts: dict[str, int], ndim: int, out_channels: int, groups: int
) -> tuple[OrbitBlock, ...]:
    """The channel blocks in canonical key order; no orbit may straddle two conv groups."""
    blocks: list[OrbitBlock] = []
    start = orbit = 0
    per_group = out_channels // groups
    for key in KEY_ORDER:
        n = counts.get(key, 0)
        if not n:
            continue
        grp = group(key, ndim)
        if grp.has_rotations:
            axes = (ndim - 2, ndim - 1)
        else:
            axes = tuple(letter_axis(ch, ndim) for ch in key)
        block = OrbitBlock(key, axes, n // grp.order, start, orbit)
        size = block.orbit_size
        for s in range(block.start, block.stop, size):
            if s // per_group != (s + size - 1) // per_group:
                raise ValueError(
                    f"symmetry key {key!r}: the orbit at output channels {s}-{s + size - 1} "
                    f"would straddle two groups (groups={groups}, {per_group} output "
                    f"channels per group); every orbit must lie within one group, so make "
                    f"group boundaries fall between orbits or use groups=1"
                )
        blocks.append(block)
        start, orbit = block.stop, orbit + block.n_orbits
    return tuple(blocks)


def _plan_arrays(blocks: tuple[OrbitBlock, ...], **settings: Any) -> SymmetryPlan:
    """The plan with its per-channel arrays; plain channels follow the blocks."""
    out_channels, ndim = settings["out_channels"], settings["ndim"]
    free_index = np.empty(out_channels, dtype=np.int64)
    member = np.zeros(out_channels, dtype=np.int64)
    flips = np.zeros((out_channels, ndim), dtype=bool)
    axis_perm = np.tile(np.arange(ndim, dtype=np.int64), (out_channels, 1))
    start = orbit = 0
    for b in blocks:
        local = np.arange(b.channels)
        free_index[b.start : b.stop] = b.first_orbit + local // b.orbit_size
        member[b.start : b.stop] = local % b.orbit_size
        grp = group(b.key, ndim)
        flips[b.start : b.stop] = grp.flips[member[b.start : b.stop]]
        axis_perm[b.start : b.stop] = grp.axis_perm[member[b.start : b.stop]]
        start, orbit = b.stop, b.first_orbit + b.n_orbits
    free_index[start:] = orbit + np.arange(out_channels - start)
    if settings["share_bias"]:
        bias_index = free_index.copy()
    else:
        bias_index = np.arange(out_channels, dtype=np.int64)
    return SymmetryPlan(
        **settings,
        blocks=blocks,
        free_index=readonly(free_index),
        member=readonly(member),
        flips=readonly(flips),
        bias_index=readonly(bias_index),
        axis_perm=readonly(axis_perm),
    )
