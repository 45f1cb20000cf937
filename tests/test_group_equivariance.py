"""Whole group-equivariant networks are exact: lifting, group convs, group batch norm,
ReLU, pooling (to subgroups too), in train and eval mode; equivariance_error finds a
broken layer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import symconv
from _group_reference import MEMBERS, act_group, apply, table
from symconv.equivariance import act, equivariance_error
from symconv.nn.group_conv import GroupConv2d, GroupConv3d
from symconv.nn.group_norm import GroupBatchNorm2d, GroupBatchNorm3d
from symconv.nn.group_pool import GroupPool
from symconv.nn.symmetric import SymmetricConv2d

KEYS_2D = ["h", "v", "hv", "r", "hr"]


def network(key: str, stride: int) -> nn.Module:
    """Image -> lift -> 3 group convs (+ group BN, ReLU, one strided) -> pool -> logits."""
    n = len(MEMBERS[key])
    torch.manual_seed(0)
    return nn.Sequential(
        SymmetricConv2d(3, 2 * n, 3, padding=1, symmetry={key: 2 * n}),
        GroupBatchNorm2d(2 * n, key), nn.ReLU(),
        GroupConv2d(2 * n, 3 * n, 3, padding=1, group=key),
        GroupBatchNorm2d(3 * n, key), nn.ReLU(),
        GroupConv2d(3 * n, 3 * n, 3, stride=stride, padding=1, group=key),
        GroupBatchNorm2d(3 * n, key), nn.ReLU(),
        GroupConv2d(3 * n, 2 * n, 1, group=key),
        GroupPool(key, "max"), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 5),
    ).double()  # fmt: skip


@pytest.mark.parametrize("key", KEYS_2D)
@pytest.mark.parametrize(("stride", "size"), [(1, 8), (1, 9), (2, 9), (2, 7)])
@pytest.mark.parametrize("train", [True, False])
def test_stack_is_exactly_invariant(key, stride, size, train):
    model = network(key, stride)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    model(x)  # running statistics that are not the initial ones
    model.train(train)
    with torch.no_grad():
        y = model(x)
        for word in MEMBERS[key]:  # torch's own rot90/flip on the input
            torch.testing.assert_close(model(apply(word, x)), y, atol=1e-10, rtol=0)
    errors = equivariance_error(model, x, key)
    assert list(errors) == [word or "e" for word in _names(key)]
    assert max(errors.values()) < 1e-10


@pytest.mark.requires_cuda
@pytest.mark.parametrize("key", KEYS_2D)
@pytest.mark.parametrize("train", [True, False])
def test_stack_is_exactly_invariant_on_cuda(key, train):
    """The same network on the GPU (cuDNN, the CUDA gather): exact, and equal to the CPU."""
    model = network(key, 2)
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    model(x)
    gpu = copy.deepcopy(model).cuda().train(train)
    model.train(train)
    with torch.no_grad():
        y = gpu(x.cuda())
        torch.testing.assert_close(y.cpu(), model(x), atol=1e-10, rtol=0)
        for word in MEMBERS[key]:
            torch.testing.assert_close(gpu(apply(word, x).cuda()), y, atol=1e-10, rtol=0)
    assert max(equivariance_error(gpu, x.cuda(), key).values()) < 1e-10


def _names(key):
    return [w.replace("rrr", "r3").replace("rr", "r2") for w in MEMBERS[key]]


@pytest.mark.parametrize("key", KEYS_2D)
@pytest.mark.parametrize("train", [True, False])
def test_group_block_is_equivariant_layer_by_layer(key, train):
    """Group feature maps in and out (no pooling): every member permutes the fields."""
    n = len(MEMBERS[key])
    torch.manual_seed(1)
    block = nn.Sequential(
        GroupConv2d(2 * n, 2 * n, 3, padding=1, group=key), GroupBatchNorm2d(2 * n, key),
        nn.ReLU(), GroupConv2d(2 * n, 3 * n, 3, padding=2, dilation=2, group=key),
        GroupBatchNorm2d(3 * n, key), nn.ReLU(), GroupConv2d(3 * n, n, 3, group=key),
    ).double()  # fmt: skip
    x = torch.randn(3, 2 * n, 10, 10, dtype=torch.float64)
    block(x)
    block.train(train)
    with torch.no_grad():
        y = block(x)
        for g in range(n):
            out = block(act_group(key, g, x))
            torch.testing.assert_close(out, act_group(key, g, y), atol=1e-10, rtol=0)
            torch.testing.assert_close(act(x, key, g, "group"), act_group(key, g, x))
    errors = equivariance_error(block, x, key, input="group", output="group")
    assert max(errors.values()) < 1e-10


@pytest.mark.parametrize(("key", "to"), [("hr", "r"), ("hr", "hv"), ("hr", "h"), ("hv", "v")])
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pool_to_subgroup_is_equivariant_under_the_subgroup(key, to, mode):
    n, m = len(MEMBERS[key]), len(MEMBERS[to])
    pool = GroupPool(key, mode, to=to)
    assert pool.out_order == m
    x = torch.randn(2, 3 * n, 5, 5, dtype=torch.float64)
    y = pool(x)
    assert y.shape == (2, 3 * m, 5, 5)
    sub_in_parent = [MEMBERS[key].index(_reduce(key, w)) for w in MEMBERS[to]]
    for i, g in enumerate(sub_in_parent):
        expected = act_group(to, i, y)
        torch.testing.assert_close(pool(act_group(key, g, x)), expected, atol=0, rtol=0)
    errors = equivariance_error(pool, x, key, input="group", output="group", output_group=to)
    assert len(errors) == m and max(errors.values()) == 0


def _reduce(key: str, word: str) -> str:
    """The parent-group word acting like ``word`` (found with the torch reference)."""
    probe = torch.randn(5, 5)
    return next(w for w in MEMBERS[key] if torch.equal(apply(w, probe), apply(word, probe)))


def test_pool_to_none_gives_invariant_fields():
    x = torch.randn(2, 16, 4, 4)
    for mode, fn in (("max", lambda t: t.amax(2)), ("mean", lambda t: t.mean(2))):
        torch.testing.assert_close(GroupPool("hr", mode)(x), fn(x.unflatten(1, (2, 8))))
    with pytest.raises(ValueError, match=r"to='v' is not allowed; it must be a subgroup of 'r'"):
        GroupPool("r", to="v")
    # Keys that are no group on these axes at all are named as `to` too.
    for group, to in (("h", "v"), ("hvz", "r"), ("hr", "x")):
        with pytest.raises(ValueError, match=rf"^to='{to}' is not allowed; .* subgroup of"):
            GroupPool(group, to=to)
    with pytest.raises(TypeError, match=r"^to=5 must be a str, a subgroup of 'hr'"):
        GroupPool("hr", to=5)
    with pytest.raises(ValueError, match=r"mode='min' is not allowed"):
        GroupPool("r", "min")
    with pytest.raises(ValueError, match=r"C a multiple of \|G\|=8"):
        GroupPool("hr")(torch.randn(1, 12, 3, 3))


def test_group_batch_norm_shares_statistics_per_field():
    bn = GroupBatchNorm2d(16, "hr").double()
    assert bn.num_features == 2 and bn.weight.shape == (2,)
    x = torch.randn(4, 16, 5, 5, dtype=torch.float64) * 3 + 1
    y = bn(x).unflatten(1, (2, 8))
    torch.testing.assert_close(y.mean((0, 2, 3, 4)), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(y.var((0, 2, 3, 4), unbiased=False), torch.ones(2).double(),
                               atol=1e-4, rtol=0)  # fmt: skip
    fields = x.unflatten(1, (2, 8))
    torch.testing.assert_close(bn.running_mean, 0.1 * fields.mean((0, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"channels=12 is not allowed; it must be a multiple of 8"):
        GroupBatchNorm2d(12, "hr")
    with pytest.raises(ValueError, match=r"expects input of shape \(N, C, H, W\)"):
        bn(torch.randn(2, 16, 5))


def test_three_d_reflection_group_network():
    torch.manual_seed(2)
    model = nn.Sequential(
        GroupConv3d(8, 16, 3, padding=1, group="hvz"), GroupBatchNorm3d(16, "hvz"), nn.ReLU(),
        GroupConv3d(16, 8, 3, stride=2, padding=1, group="hvz"), GroupPool("hvz"),
    ).double()  # fmt: skip
    x = torch.randn(2, 8, 5, 5, 5, dtype=torch.float64)
    errors = equivariance_error(model, x, "hvz", input="group", output="image")
    assert len(errors) == 8 and max(errors.values()) < 1e-10


def test_equivariance_error_catches_a_broken_layer():
    model = network("hr", 1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    broken = model[3]
    # Read the member axis unpermuted: output member g uses g(free) without the g^-1 shift.
    index = broken.gather_index().unflatten(0, (-1, 8)).unflatten(2, (-1, 8))
    fixed = torch.stack([index[:, g, :, torch.tensor(table("hr")[g])] for g in range(8)], 1)
    bias = broken.bias_gather_index()
    broken._set_gather(
        fixed.flatten(2, 3).flatten(0, 1).numpy(), None if bias is None else bias.numpy()
    )
    broken.clear_cache()
    errors = equivariance_error(model, x, "hr")
    assert errors["e"] == 0
    assert min(v for k, v in errors.items() if k != "e") > 1e-6
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    assert max(equivariance_error(plain, x, "r").values()) > 1e-6


def test_equivariance_error_arguments():
    model = nn.Identity()
    x = torch.randn(1, 8, 4, 4)
    assert equivariance_error(model, x, "hr", input="image", output="image")["r3h"] == 0
    assert set(equivariance_error(model, x, "hr", output="image", members=["r", 2])) == {"r", "r2"}
    with pytest.raises(ValueError, match=r"output='logits' is not allowed"):
        equivariance_error(model, x, "hr", output="logits")
    with pytest.raises(ValueError, match=r"x has shape \(1, 8, 4\): group='r' acts on 2"):
        equivariance_error(model, torch.randn(1, 8, 4), "r")
    with pytest.raises(ValueError, match="needs a model output with 4 dims"):
        equivariance_error(nn.Flatten(), x, "r", output="image")


def test_lifting_with_rotation_keys_permutes_as_the_plan_says():
    """SymmetricConv2d(symmetry={'r': '50%', 'hr': 16}): turning the input permutes the
    channels of every orbit whose group holds the turn, as member_permutation says."""
    torch.manual_seed(3)
    layer = SymmetricConv2d(3, 40, 3, padding=1, symmetry={"r": "50%", "hr": 16}).double()
    assert [(b.key, b.channels) for b in layer.plan.blocks] == [("r", 20), ("hr", 16)]
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    y = layer(x).detach()
    for word in MEMBERS["hr"]:
        name = word.replace("rrr", "r3").replace("rr", "r2") or "e"
        perm, eq = symconv.member_permutation(layer, name)  # torch, like flip_permutation
        assert (perm.dtype, eq.dtype) == (torch.int64, torch.bool)
        plan_perm, plan_eq = layer.plan.member_permutation(name)
        assert perm.tolist() == plan_perm.tolist() and eq.tolist() == plan_eq.tolist()
        expected = apply(word, y)[:, perm]
        got = layer(apply(word, x)).detach()
        torch.testing.assert_close(got[:, eq], expected[:, eq], atol=1e-12, rtol=0)
        assert eq.sum() == (40 if not word else 16 if "h" in word else 36)
    for reflection in ("h", "v", "hv"):  # flip_permutation is member_permutation on flips
        for a, b in zip(
            symconv.flip_permutation(layer, reflection),
            symconv.member_permutation(layer.plan, reflection),
            strict=True,
        ):
            assert torch.equal(a, b)
    with pytest.raises(TypeError, match="layer_or_plan"):
        symconv.member_permutation(nn.Linear(2, 2), "r")


def test_equivariance_error_checks_its_arguments_up_front():
    layer = GroupConv2d(8, 8, 3, padding=1, group="hr")
    x = torch.randn(1, 8, 6, 6)
    with pytest.raises(TypeError, match="model=5 must be a callable"):
        equivariance_error(5, x, "hr")
    with pytest.raises(TypeError, match="members=5 must be a list"):
        equivariance_error(layer, x, "hr", input="group", output="group", members=5)
    with pytest.raises(ValueError, match=r"members=\['h'\] is not allowed; .* group 'r': e, r"):
        equivariance_error(layer, x, "r", input="group", output="group", members=["h"])
    with pytest.raises(ValueError, match="output_group='r' is only used with output='group'"):
        equivariance_error(layer, x, "hr", output_group="r")
    with pytest.raises(ValueError, match=r"x has shape \(8, 6, 6\): group='hr' acts on 2"):
        equivariance_error(layer, torch.randn(8, 6, 6), "hr")
    with pytest.raises(TypeError, match="model\\(x\\) must return a torch.Tensor, got list"):
        equivariance_error(lambda t: [t], x, "hr")
    with pytest.raises(ValueError, match=r"model\(x\) has 4 channels, not fields of \|G\|=8"):
        equivariance_error(GroupPool("hr", to="r"), x, "hr", input="group", output="group")
    # With output_group given, the hint asks whether it is right instead of asking for it.
    with pytest.raises(ValueError, match=r"has 2 channels, .*=4 \(output_group='hv'\): is it"):
        equivariance_error(GroupPool("hr", to="h"), x[:, :8], "hr", input="group",
                           output="group", output_group="hv")  # fmt: skip
