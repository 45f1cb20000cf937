"""The framework-agnostic symmetry plan: parsing, validation, layout, expansion."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from symconv.symmetry import (
    KEY_ORDER,
    allowed_keys,
    canonical_key,
    make_plan,
    parse_symmetry_string,
)

LETTER_AXIS = {1: {"h": 0}, 2: {"h": 1, "v": 0}, 3: {"h": 2, "v": 1, "z": 0}}


@st.composite
def specs(draw, ndim=None, max_out=48):
    """(ndim, out_channels, spec) with integer counts that fit."""
    ndim = ndim or draw(st.sampled_from([1, 2, 3]))
    out = draw(st.integers(1, max_out))
    keys = draw(st.lists(st.sampled_from(allowed_keys(ndim)), unique=True, max_size=4))
    spec: dict[str, int] = {}
    left = out
    for key in keys:
        size = 2 ** len(key)
        n = draw(st.integers(0, left // size))
        spec[key] = n * size
        left -= n * size
    return ndim, out, spec


def naive_members(key: str, ndim: int) -> list[set[int]]:
    """Group elements of a key in binary generator order, as sets of flipped axes."""
    letters = [ch for ch in "hvz" if ch in key]
    return [
        {LETTER_AXIS[ndim][ch] for i, ch in enumerate(letters) if (m >> i) & 1}
        for m in range(2 ** len(letters))
    ]


@given(specs(), st.booleans())
def test_layout_matches_definition(case, share_bias):
    ndim, out, spec = case
    plan = make_plan(spec, out, ndim, share_bias=share_bias)
    # Walk the documented layout by hand: keys in canonical order, orbits adjacent,
    # members in binary generator order, plain channels last.
    c = orbit = 0
    for key in KEY_ORDER:
        for _ in range(spec.get(key, 0) // 2 ** len(key)):
            for flipped in naive_members(key, ndim):
                assert plan.free_index[c] == orbit
                assert set(np.flatnonzero(plan.flips[c])) == flipped
                c += 1
            orbit += 1
    while c < out:
        assert plan.free_index[c] == orbit and not plan.flips[c].any()
        c, orbit = c + 1, orbit + 1
    assert plan.n_free == orbit
    assert plan.n_symmetric == sum(spec.values())
    assert plan.n_bias == (plan.n_free if share_bias else out)
    expected_bias = plan.free_index if share_bias else np.arange(out)
    np.testing.assert_array_equal(plan.bias_index, expected_bias)


@given(specs())
def test_flip_permutation_is_orbit_involution(case):
    ndim, out, spec = case
    plan = make_plan(spec, out, ndim)
    letters = "hvz"[:ndim]
    for r in range(1, ndim + 1):
        axes = letters[:r]
        perm, eq = plan.flip_permutation(axes)
        np.testing.assert_array_equal(perm[perm], np.arange(out))  # a reflection is an involution
        np.testing.assert_array_equal(plan.free_index[perm], plan.free_index)  # stays in orbit
        flipped = {LETTER_AXIS[ndim][ch] for ch in axes}
        for ch in range(out):
            block = plan.block_for_channel(ch)
            contains = block is not None and flipped <= set(block.axes)
            assert eq[ch] == contains
            if contains:
                # perm[c] is the member whose flips differ from c's exactly by `axes`
                diff = plan.flips[ch] ^ plan.flips[perm[ch]]
                assert set(np.flatnonzero(diff)) == flipped
            else:
                assert perm[ch] == ch


def naive_expand(plan, free):
    """Torch layout, straight from the definition: flip the free filter per channel."""
    out = []
    for c in range(plan.out_channels):
        f = free[plan.free_index[c]]
        axes = tuple(1 + a for a in np.flatnonzero(plan.flips[c]))
        out.append(np.flip(f, axis=axes) if axes else f)
    return np.stack(out)


@given(specs(), st.integers(1, 3), st.data())
def test_gather_index_expands_like_naive(case, cin, data):
    ndim, out, spec = case
    plan = make_plan(spec, out, ndim)
    ks = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    rng = np.random.default_rng(0)
    free = rng.standard_normal(plan.free_weight_shape(cin, ks))
    full = plan.expand(free)
    np.testing.assert_array_equal(full, naive_expand(plan, free))
    # Keras layout (*k, in, out) is the same kernel transposed.
    free_k = np.moveaxis(free, (0, 1), (-1, -2))
    full_k = plan.expand(free_k, layout="keras")
    np.testing.assert_array_equal(np.moveaxis(full_k, (-1, -2), (0, 1)), full)


@given(specs(), st.data())
def test_project_is_orthogonal_projection(case, data):
    ndim, out, spec = case
    plan = make_plan(spec, out, ndim)
    ks = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    rng = np.random.default_rng(1)
    free = rng.standard_normal(plan.free_weight_shape(2, ks))
    np.testing.assert_allclose(plan.project(plan.expand(free)), free, atol=1e-12)
    w = rng.standard_normal((out, 2, *ks))
    residual = w - plan.expand(plan.project(w))
    v = plan.expand(rng.standard_normal(free.shape))
    assert abs(np.sum(residual * v)) < 1e-9  # residual is orthogonal to symmetric kernels
    b = rng.standard_normal(out)
    np.testing.assert_allclose(
        plan.expand_bias(plan.project_bias(plan.expand_bias(b[: plan.n_bias]))),
        plan.expand_bias(b[: plan.n_bias]),
    )


@given(
    st.sampled_from(["h", "v", "hv"]),
    st.integers(1, 64),
    st.decimals(0, 100, places=2, allow_nan=False),
)
def test_percentages_round_down_to_whole_orbits(key, out, pct):
    plan = make_plan({key: f"{pct}%"}, out, 2)
    size = 2 ** len(key)
    expected = math.floor(Fraction(str(pct)) * out / 100 / size) * size
    assert plan.n_symmetric == expected


def test_percentage_examples():
    assert make_plan({"hv": "50%"}, 10, 2).n_symmetric == 4
    assert make_plan({"h": "50%", "v": "50%"}, 16, 2).n_symmetric == 16
    assert make_plan({"hv": "12.5%"}, 64, 2).n_symmetric == 8
    assert make_plan({"h": " 100 % "}, 6, 1).n_symmetric == 6
    assert make_plan({"hvz": "100%"}, 16, 3).n_free == 2


def test_keys_are_normalised():
    assert canonical_key("vh", 2) == "hv"
    assert canonical_key("ZVH", 3) == "hvz"
    assert make_plan({"vh": 4}, 4, 2).blocks[0].key == "hv"


def test_plain_specs():
    for spec in (None, {}, "", "none"):
        plan = make_plan(spec, 5, 2)
        assert plan.is_trivial and plan.n_free == 5
        np.testing.assert_array_equal(plan.free_index, np.arange(5))


def test_seed_example_layout():
    plan = make_plan({"h": 2, "v": 4, "hv": 8}, 16, 2)
    assert [b.key for b in plan.blocks] == ["h", "v", "hv"]
    assert [(b.start, b.stop) for b in plan.blocks] == [(0, 2), (2, 6), (6, 14)]
    assert plan.n_free == 1 + 2 + 2 + 2
    assert "plain: channels 14-15" in plan.describe()


def test_plan_arrays_are_read_only():
    plan = make_plan({"h": 2}, 4, 2)
    with pytest.raises(ValueError, match="read-only"):
        plan.free_index[0] = 3


@pytest.mark.parametrize(
    ("spec", "ndim", "match"),
    [
        ({"x": 2}, 2, r"unknown symmetry key 'x'; allowed keys for a 2-D layer: 'h', 'v', 'hv'"),
        ({"hh": 2}, 2, r"unknown symmetry key 'hh'"),
        ({"z": 2}, 2, r"symmetry key 'z' needs the z axis, which a 2-D layer lacks"),
        ({"v": 2}, 1, r"symmetry key 'v' needs the v axis, which a 1-D layer lacks"),
        ({"hvz": 8}, 2, r"needs the z axis"),
        ({3: 2}, 2, r"symmetry key 3 is not a string"),
        ({"h": -2}, 2, r"symmetry\['h'\] = -2 is negative"),
        ({"h": 2.0}, 2, r"symmetry\['h'\] = 2.0 is not allowed"),
        ({"h": True}, 2, r"symmetry\['h'\] = True is not allowed"),
        ({"h": None}, 2, r"symmetry\['h'\] = None is not allowed"),
        ({"hv": 6}, 2, r"symmetry\['hv'\] = 6 is not a multiple of the orbit size 4.*use 4 or 8"),
        ({"h": 3}, 1, r"not a multiple of the orbit size 2"),
        ({"h": "150%"}, 2, r"symmetry\['h'\] = '150%' is outside 0%-100%"),
        ({"h": "-5%"}, 2, r"is not a percentage"),
        ({"h": "50"}, 2, r"symmetry\['h'\] = '50' is not a percentage"),
        ({"h": "half"}, 2, r"is not a percentage"),
        (
            {"h": 12, "v": 8},
            2,
            r"asks for 20 channels \(h: 12, v: 8\) but the layer has out_channels=16",
        ),
        ({"hv": 4, "vh": 4}, 2, r"symmetry key 'vh' repeats key 'hv'"),
        ("hv", 2, r"symmetry item 'hv' in 'hv' is malformed"),
    ],
)
def test_invalid_specs(spec, ndim, match):
    with pytest.raises(ValueError, match=match):
        make_plan(spec, 16, ndim)


def test_invalid_layer_arguments():
    with pytest.raises(TypeError, match="symmetry=.*must be a dict"):
        make_plan(["h", 2], 4, 2)
    with pytest.raises(TypeError, match="share_bias=1 must be a bool"):
        make_plan({}, 4, 2, share_bias=1)
    with pytest.raises(ValueError, match="ndim=4; allowed: 1, 2, 3"):
        make_plan({}, 4, 4)
    with pytest.raises(ValueError, match="out_channels=0 is not allowed; it must be an int >= 1"):
        make_plan({}, 0, 2)
    with pytest.raises(ValueError, match="not divisible by groups=3"):
        make_plan({}, 4, 2, groups=3)


def test_orbit_may_not_straddle_groups():
    with pytest.raises(
        ValueError, match=r"key 'hv': the orbit at output channels 2-5 would straddle"
    ):
        make_plan({"h": 2, "hv": 4}, 8, 2, groups=2)
    plan = make_plan({"hv": 8}, 16, 2, groups=4)  # group boundaries between orbits: fine
    assert plan.n_free == 2 + 8
    with pytest.raises(ValueError, match="straddle"):
        make_plan({"h": 2}, 4, 2, groups=4)  # depthwise: every orbit straddles


def test_parse_symmetry_string():
    assert parse_symmetry_string("hv:50%, h:2") == {"hv": "50%", "h": 2}
    assert parse_symmetry_string(" none ") == {}
    with pytest.raises(ValueError, match="symmetry key 'h' appears twice"):
        parse_symmetry_string("h:2,h:4")
    with pytest.raises(ValueError, match="malformed"):
        parse_symmetry_string("h2")
    assert make_plan("hv:50%,h:2", 16, 2).n_symmetric == 10


@pytest.mark.parametrize("text", ["hv:-4", "hv: -4", "h:2,hv:-4"])
def test_string_spec_negative_count_says_negative(text):
    """The string form gives the dict form's message (it used to say 'not a percentage')."""
    with pytest.raises(ValueError, match=r"symmetry\['hv'\] = -4 is negative; counts must be >= 0"):
        make_plan(text, 16, 2)
    assert parse_symmetry_string(text)["hv"] == -4
    assert parse_symmetry_string("hv:+4") == {"hv": 4}


def test_flip_permutation_rejects_bad_axes():
    plan = make_plan({"h": 2}, 4, 2)
    with pytest.raises(ValueError, match="axes='z' is not a set of flip axes for a 2-D layer"):
        plan.flip_permutation("z")


# -- rotation keys (r = C4, hr = D4) -------------------------------------------------------

# Naive members from np.rot90 (the torch.rot90 convention) and np.flip, in the documented
# order: r^k for r; r^k, then r^k after a width reflection, for hr.
ROT_MEMBERS = {
    "r": [lambda f, k=k: np.rot90(f, k, axes=(-2, -1)) for k in range(4)],
    "hr": [lambda f, k=k: np.rot90(f, k, axes=(-2, -1)) for k in range(4)]
    + [lambda f, k=k: np.rot90(np.flip(f, -1), k, axes=(-2, -1)) for k in range(4)],
}


@given(st.integers(0, 3), st.integers(0, 2), st.integers(0, 5), st.integers(1, 4))
def test_rotation_orbits_expand_like_naive(n_r, n_hr, n_plain, k):
    spec = {"r": 4 * n_r, "hv": 4, "hr": 8 * n_hr}
    out = 4 + 4 * n_r + 8 * n_hr + n_plain
    plan = make_plan(spec, out, 2)
    assert [b.key for b in plan.blocks] == [key for key in ("hv", "r", "hr") if spec[key]]
    free = np.random.default_rng(0).standard_normal(plan.free_weight_shape(2, (k, k)))
    full = plan.expand(free)
    c = 0
    for key in ("hv", "r", "hr"):
        members = ROT_MEMBERS.get(key, [lambda f: f, lambda f: np.flip(f, -1),
                                        lambda f: np.flip(f, -2), lambda f: np.flip(f, (-2, -1))])  # fmt: skip
        for _ in range(spec[key] // len(members)):
            for act in members:
                np.testing.assert_array_equal(full[c], act(free[plan.free_index[c]]))
                c += 1
    np.testing.assert_array_equal(full[c:], free[plan.free_index[c:]])  # plain channels
    np.testing.assert_allclose(plan.project(full), free, atol=1e-12)
    free_k = np.moveaxis(free, (0, 1), (-1, -2))
    full_k = np.moveaxis(plan.expand(free_k, layout="keras"), (-1, -2), (0, 1))
    np.testing.assert_array_equal(full_k, full)


def test_member_permutation_follows_the_multiplication_table():
    plan = make_plan({"h": 2, "r": 4, "hr": 8}, 16, 2)
    # r: member m -> r^-1 m within each rotation orbit; h orbits are not r-equivariant
    perm, eq = plan.member_permutation("r")
    np.testing.assert_array_equal(perm, [0, 1, 5, 2, 3, 4, 9, 6, 7, 8, 13, 10, 11, 12, 14, 15])
    np.testing.assert_array_equal(eq, [False] * 2 + [True] * 12 + [False] * 2)
    # h: h orbits swap, the rotation orbit is not h-equivariant, hr: m -> h m
    perm, eq = plan.member_permutation(("hr", 4))
    np.testing.assert_array_equal(perm[:2], [1, 0])
    np.testing.assert_array_equal(perm[6:14], 6 + np.array([4, 7, 6, 5, 0, 3, 2, 1]))
    np.testing.assert_array_equal(eq, [True] * 2 + [False] * 4 + [True] * 8 + [False] * 2)
    # the half turn is the hv flip: flip_permutation agrees with member_permutation
    for a, b in zip(plan.flip_permutation("hv"), plan.member_permutation("r2"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_rotation_keys_validation():
    assert canonical_key("vr", 2) == "hr" and canonical_key("RH", 2) == "hr"
    assert allowed_keys(2, rotations=True) == ("h", "v", "hv", "r", "hr")
    assert allowed_keys(3, rotations=True) == allowed_keys(3)
    with pytest.raises(ValueError, match=r"symmetry key 'r' turns the \(height, width\) plane"):
        make_plan({"r": 4}, 8, 3)
    with pytest.raises(ValueError, match=r"unknown symmetry key 'hvr'; allowed keys for a 2-D "
                       r"layer: 'h', 'v', 'hv', 'r', 'hr'"):  # fmt: skip
        make_plan({"hvr": 8}, 8, 2)
    with pytest.raises(ValueError, match=r"symmetry\['hr'\] = 4 is not a multiple of the orbit "
                       r"size 8"):  # fmt: skip
        make_plan({"hr": 4}, 8, 2)
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 5\) is not allowed.*square"):
        make_plan({"r": 4}, 8, 2).gather_index(2, (3, 5))
