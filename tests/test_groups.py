"""The groups of the pixel grid (symconv.core.groups), checked against torch.rot90/flip."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from symconv.core.groups import GROUP_KEYS, canonical_group_key, group, minimal_ndim

# Naive reference: a member name is a word read right to left; each letter is a torch op
# on the trailing spatial dims of a (C, *spatial) tensor.
TORCH_OPS = {
    "h": lambda x: x.flip(-1),
    "v": lambda x: x.flip(-2),
    "z": lambda x: x.flip(-3),
    "r": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
}


def naive_apply(name: str, x: torch.Tensor) -> torch.Tensor:
    letters = "" if name == "e" else name.replace("r2", "rr").replace("r3", "rrr")
    for ch in reversed(letters):  # rightmost letter acts first
        x = TORCH_OPS[ch](x)
    return x


def keys_with_ndim():
    return [(k, nd) for k in GROUP_KEYS for nd in (1, 2, 3) if minimal_ndim(k) <= nd and
            ("r" not in k or nd == 2)]  # fmt: skip


@pytest.mark.parametrize(("key", "ndim"), keys_with_ndim())
def test_action_matches_torch_and_is_a_homomorphism(key, ndim):
    grp = group(key, ndim)
    x = torch.randn(2, *(5,) * ndim, dtype=torch.float64)
    acted = [torch.from_numpy(np.ascontiguousarray(grp.apply(x.numpy(), g, 1))) for g in
             range(grp.order)]  # fmt: skip
    for g, name in enumerate(grp.names):
        assert torch.equal(acted[g], naive_apply(name, x)), name
    assert len({a.numpy().tobytes() for a in acted}) == grp.order  # members act differently
    for a, b in itertools.product(range(grp.order), repeat=2):
        ab = grp.table[a, b]
        # (a b) x == a (b x), with both sides from the torch reference
        assert torch.equal(naive_apply(grp.names[ab], x), naive_apply(grp.names[a], acted[b]))


@pytest.mark.parametrize(("key", "ndim"), keys_with_ndim())
def test_group_axioms(key, ndim):
    grp = group(key, ndim)
    n, t = grp.order, grp.table
    assert n == {"r": 4, "hr": 8}.get(key, 2 ** len(key))
    assert grp.names[0] == "e"
    np.testing.assert_array_equal(t[0], np.arange(n))  # identity
    np.testing.assert_array_equal(t[:, 0], np.arange(n))
    for row in t:  # closure: every row and column is a permutation
        assert sorted(row) == list(range(n))
    for a, b, c in itertools.product(range(n), repeat=3):
        assert t[t[a, b], c] == t[a, t[b, c]]  # associativity
    for a in range(n):
        assert t[a, grp.inverse[a]] == 0 and t[grp.inverse[a], a] == 0


def test_reflection_member_order_is_binary():
    assert group("hvz").names == ("e", "h", "v", "hv", "z", "hz", "vz", "hvz")
    assert group("hr").names == ("e", "r", "r2", "r3", "h", "rh", "r2h", "r3h")
    assert group("r").names == ("e", "r", "r2", "r3")


@pytest.mark.parametrize(
    ("parent", "sub", "members"),
    [
        ("hr", "r", [0, 1, 2, 3]),
        ("hr", "hv", [0, 4, 6, 2]),
        ("hr", "h", [0, 4]),
        ("hr", "v", [0, 6]),
        ("hv", "h", [0, 1]),
        ("hvz", "hz", [0, 1, 4, 5]),
        ("r", "r", [0, 1, 2, 3]),
    ],
)
def test_subgroups_and_cosets(parent, sub, members):
    grp = group(parent)
    np.testing.assert_array_equal(grp.subgroup(sub), members)
    cosets = grp.cosets(sub)
    assert sorted(cosets.ravel()) == list(range(grp.order))  # the cosets cover G once
    np.testing.assert_array_equal(cosets[:, 0], members)  # first representative: e
    for row, h in zip(cosets, members, strict=True):  # row i = h_i C for one set C
        np.testing.assert_array_equal(row, grp.table[h, cosets[0]])


@pytest.mark.parametrize(("parent", "sub"), [("r", "h"), ("hv", "r"), ("h", "v"), ("r", "hr")])
def test_not_a_subgroup(parent, sub):
    with pytest.raises(ValueError, match=f"to={sub!r} is not allowed"):
        group(parent).subgroup(sub)


@pytest.mark.parametrize(("key", "canon"), [("vr", "hr"), ("rv", "hr"), ("RH", "hr"),
                                            ("vh", "hv"), ("zvh", "hvz")])  # fmt: skip
def test_canonical_spelling(key, canon):
    assert canonical_group_key(key) == canon


@pytest.mark.parametrize(
    ("key", "ndim", "error", "match"),
    [
        ("q", 2, ValueError, r"group='q' is not allowed; it must be one of the keys of a 2-D"),
        ("hvr", None, ValueError, r"group='hvr' is not allowed"),
        ("rz", None, ValueError, r"group='rz' is not allowed"),
        ("r", 3, ValueError, r"group='r' is not allowed.*rotation keys need a 2-D layer"),
        ("v", 1, ValueError, r"group='v' is not allowed"),
        ("", 2, ValueError, r"group='' is not allowed"),
        (4, 2, TypeError, r"group=4 must be a str"),
    ],
)
def test_bad_keys(key, ndim, error, match):
    with pytest.raises(error, match=match):
        group(key, ndim)


def test_no_group_where_no_rank_picks_a_default():
    """GroupPool and Keras' GroupBatchNormalization do not know their input's rank at
    construction, so ``group=None`` cannot mean the rank's default there, as it does in
    GroupConv2d and GroupBatchNorm2d: the message says so."""
    import symconv

    why = r"group=None must be a str, .*\(no default: this layer does not know its input's rank\)"
    with pytest.raises(TypeError, match=why):
        symconv.GroupPool(None)
    assert symconv.GroupConv2d(8, 8, 3, group=None).group == "hr"
    with pytest.raises(TypeError, match=r"group=None must be a str, one of the keys of a 2-D"):
        group(None, 2)


def test_rotation_keys_need_square_kernels():
    group("hr").check_kernel((3, 3))
    group("hv").check_kernel((3, 5))
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 5\) is not allowed.*square"):
        group("r").check_kernel((3, 5))


def test_member_lookup():
    grp = group("hr")
    assert grp.index("rh") == 5 and grp.index(7) == 7
    assert grp.index(group("hv", 2).matrices[3]) == 2  # hv is the half turn r2
    with pytest.raises(ValueError, match="member='x'"):
        grp.index("x")
    with pytest.raises(ValueError, match="member=8"):
        grp.index(8)


def test_core_module_imports_no_framework():
    code = (
        "import sys, symconv.core.groups; "
        "assert not {'torch', 'keras', 'tensorflow'} & set(sys.modules), 'framework loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
