"""GroupConv1d/2d/3d against a naive reference; gradients, conversion, cache, layouts."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import symconv
from _group_reference import MEMBERS, NDIM, act_group, full_kernel
from symconv.core.group_conv import GroupConvSpec
from symconv.nn.group_conv import GroupConv1d, GroupConv2d, GroupConv3d

CLASSES = {1: GroupConv1d, 2: GroupConv2d, 3: GroupConv3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CASES = [(key, NDIM[key]) for key in MEMBERS] + [("h", 1)]


def make(key, ndim, fin=2, fout=3, k=3, **kw):
    n = len(MEMBERS[key])
    torch.manual_seed(0)
    return CLASSES[ndim](fin * n, fout * n, k, group=key, dtype=torch.float64, **kw)


@pytest.mark.parametrize(("key", "ndim"), CASES)
def test_kernel_and_output_match_naive_reference(key, ndim):
    layer = make(key, ndim, padding=1)
    expected = full_kernel(key, layer.weight.detach())
    assert torch.equal(layer.expanded_weight.detach(), expected)
    fields_bias = layer.bias.detach().repeat_interleave(len(MEMBERS[key]))
    assert torch.equal(layer.expanded_bias.detach(), fields_bias)
    x = torch.randn(2, layer.in_channels, *(6,) * ndim, dtype=torch.float64)
    bias = layer.expanded_bias.detach()
    torch.testing.assert_close(layer(x), CONV[ndim](x, expected, bias, padding=1))


@given(
    key=st.sampled_from(["h", "v", "hv", "r", "hr"]),
    fin=st.integers(1, 3),
    fout=st.integers(1, 3),
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding_mode=st.sampled_from(["zeros", "circular", "reflect"]),
    data=st.data(),
)
def test_equivariant_for_every_member(key, fin, fout, k, stride, dilation, padding_mode, data):
    pad = data.draw(st.integers(0, k - 1))
    layer = make(key, 2, fin, fout, k, stride=stride, dilation=dilation, padding=pad,
                 padding_mode=padding_mode)  # fmt: skip
    # Sizes the stride divides after padding (sampling commutes with every member), larger
    # than the padding (reflect padding needs it).
    base = dilation * (k - 1) + 1 - 2 * pad
    size = base + stride * (max(0, -(-(pad + 1 - base) // stride)) + data.draw(st.integers(0, 2)))
    x = torch.randn(2, layer.in_channels, size, size, dtype=torch.float64)
    y = layer(x)
    for g in range(len(MEMBERS[key])):
        torch.testing.assert_close(
            layer(act_group(key, g, x)), act_group(key, g, y), atol=1e-10, rtol=0
        )


def test_gradcheck():
    layer = make("hr", 2, 1, 1, 3, padding=1)
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_to_conv_and_from_conv():
    layer = make("hr", 2, stride=2, padding=1)
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    conv = layer.to_conv()
    assert type(conv) is nn.Conv2d
    torch.testing.assert_close(conv(x), layer(x), atol=1e-12, rtol=0)
    back = GroupConv2d.from_conv(conv, group="hr")
    # A group kernel comes back bit for bit (mean of 8 equal copies), in both precisions.
    assert torch.equal(back.weight, layer.weight) and torch.equal(back.bias, layer.bias)
    single = make("hr", 2).float()
    again = GroupConv2d.from_conv(single.to_conv(), group="hr")
    assert torch.equal(again.weight, single.weight) and torch.equal(again.bias, single.bias)
    # A random conv: the projection's residual is orthogonal to every group kernel.
    plain = nn.Conv2d(16, 24, 3, dtype=torch.float64)
    proj = GroupConv2d.from_conv(plain, group="hr")
    residual = (plain.weight - proj.expanded_weight).detach()
    other = make("hr", 2).expanded_weight.detach()
    assert abs(float((residual * other).sum())) < 1e-10
    torch.testing.assert_close(proj.bias.repeat_interleave(8).sum(), plain.bias.sum())


@pytest.mark.parametrize(
    ("conv", "match"),
    [
        (nn.Conv2d(12, 16, 3), r"in_channels=12 is not allowed; it must be a multiple of 8"),
        (nn.Conv2d(16, 16, (3, 5)), r"kernel_size=\(3, 5\) is not allowed.*square"),
    ],
)
def test_from_conv_says_why_not(conv, match):
    with pytest.raises(ValueError, match=match):
        GroupConv2d.from_conv(conv, group="hr")
    with pytest.raises(TypeError, match="needs a plain nn.Conv2d"):
        GroupConv2d.from_conv(make("r", 2), group="r")


def test_eval_cache_and_invalidation():
    layer = make("r", 2, padding=1)
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        first = layer.expanded_weight
        assert layer.expanded_weight is first  # cached
        layer.weight.add_(1.0)  # in place: the version counter moves
        second = layer.expanded_weight
        assert second is not first
        torch.testing.assert_close(second, full_kernel("r", layer.weight))
        torch.testing.assert_close(layer(x), F.conv2d(x, second, layer.expanded_bias, padding=1))
    assert layer.expanded_weight.requires_grad  # training: no cache


def test_channels_last_matches_contiguous():
    layer = make("hr", 2, padding=1)
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    expected = layer(x)
    layer = layer.to(memory_format=torch.channels_last)
    assert layer.weight.is_contiguous(memory_format=torch.channels_last)
    out = layer(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert layer.expanded_weight.is_contiguous(memory_format=torch.channels_last)
    out.sum().backward()
    assert layer.weight.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 12}, ValueError, r"in_channels=12 is not allowed; it must be a multiple"),
        ({"out_channels": 4}, ValueError, r"out_channels=4 is not allowed"),
        ({"kernel_size": (3, 1)}, ValueError, r"kernel_size=\(3, 1\) is not allowed"),
        ({"group": "hvz"}, ValueError, r"group='hvz' is not allowed"),
        ({"group": 3}, TypeError, r"group=3 must be a str"),
        ({"groups": 3}, ValueError, r"in_channels=16 is not divisible by groups=3"),
        ({"groups": 2, "in_channels": 8}, ValueError, r"in_channels=8 is not allowed.*groups=2"),
    ],
)
def test_validation(kwargs, error, match):
    args = {"in_channels": 16, "out_channels": 16, "kernel_size": 3, "group": "hr", **kwargs}
    with pytest.raises(error, match=match):
        GroupConv2d(**args)


def test_spec_params_match_layers_and_keras_layout():
    for ndim in (1, 2, 3):
        spec = GroupConvSpec.example(ndim)
        layer = CLASSES[ndim].from_spec(spec)
        shapes = {p.torch_name: p.torch_shape for p in spec.params()}
        assert shapes == {n: tuple(p.shape) for n, p in layer.named_parameters()}
        x = torch.randn(spec.example_input_shape())
        assert layer(x).shape[1] == spec.conv.out_channels
        free = np.random.default_rng(0).standard_normal(spec.free_weight_shape())
        perm = spec.params()[0].to_keras
        keras_full = np.transpose(free, perm).reshape(-1)[spec.gather_index("keras")]
        np.testing.assert_array_equal(keras_full, np.transpose(spec.expand(free), perm))
    assert GroupConv2d(8, 8, 3, group="hv").groups == 1  # positional order of nn.Conv2d
    assert GroupConv2d(16, 16, 3, 1, 1, 1, 2, group="r").groups == 2


def test_core_module_imports_no_framework():
    code = (
        "import sys, symconv.core.group_conv, symconv.core.group_norm; "
        "assert not {'torch', 'keras', 'tensorflow'} & set(sys.modules), 'framework loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fx_and_jit_trace_record_the_whole_stack():
    from symconv.nn.group_norm import GroupBatchNorm2d
    from symconv.nn.group_pool import GroupPool

    model = nn.Sequential(
        GroupConv2d(8, 16, 3, padding=1, group="hr"), GroupBatchNorm2d(16, "hr"), nn.ReLU(),
        GroupPool("hr", to="r"),
    )  # fmt: skip
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))
    model.eval()
    with pytest.warns(torch.jit.TracerWarning):  # the channel check is recorded as constant
        traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))


# -- arguments a new user gets wrong --------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"padding": (1, 2)}, "padding"),
        ({"stride": (1, 2)}, "stride"),
        ({"dilation": (1, 2)}, "dilation"),
    ],
)
def test_rotation_groups_need_the_same_grid_on_both_axes(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}=\(1, 2\) is not allowed; it must be the same"):
        symconv.GroupConv2d(4, 4, 3, group="r", **kwargs)
    symconv.GroupConv2d(4, 4, 3, group="h", **kwargs)  # a reflection keeps its axes
    # The lifting layer turns its filters too: the same rule, at construction.
    with pytest.raises(ValueError, match=rf"^{name}=\(1, 2\) is not allowed; it must be the same"):
        symconv.SymmetricConv2d(3, 16, 3, symmetry={"hr": 8, "h": 2}, **kwargs)
    symconv.SymmetricConv2d(3, 16, 3, symmetry={"hv": 8, "h": 2}, **kwargs)


def test_an_option_of_another_family_is_named_with_what_the_layer_takes():
    with pytest.raises(TypeError, match=r"^GroupConv2d\(\) got an unexpected keyword argument "
                       r"'symmetry'; beyond nn.Conv2d's arguments it takes group$"):  # fmt: skip
        symconv.GroupConv2d(16, 16, 3, group="hr", symmetry={"h": 2})
    with pytest.raises(TypeError, match=r"'group'; beyond nn.Conv1d's arguments it takes "
                       r"symmetry, share_bias$"):  # fmt: skip
        symconv.SymmetricConv1d(3, 8, 3, group="h")


def test_each_dimension_has_a_default_group():
    assert symconv.GroupConv1d(2, 2, 3).group == "h"
    assert symconv.GroupConv2d(8, 8, 3).group == "hr"
    assert symconv.GroupConv3d(8, 8, 3).group == "hvz"
    assert symconv.GroupBatchNorm1d(4).group == "h"


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"eps": -1.0}, ValueError, r"eps=-1.0 is not allowed"),
        ({"momentum": 2.0}, ValueError, r"momentum=2.0 is not allowed"),
        ({"momentum": "a"}, TypeError, r"momentum='a' must be a number from 0 to 1, or None"),
        ({"momentum": float("nan")}, ValueError, r"momentum=nan is not allowed; it must be a"),
        ({"affine": 1}, TypeError, r"affine=1 must be a bool"),
    ],
)
def test_group_batch_norm_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        symconv.GroupBatchNorm2d(16, "hr", **kwargs)


def test_group_batch_norm_spec_converts_between_the_frameworks_conventions():
    from symconv.core.group_norm import GroupBatchNormSpec

    torch_spec = symconv.GroupBatchNorm2d(16, "hr", eps=1e-4, momentum=0.25).spec
    assert torch_spec.fields == 2 and torch_spec.ndim == 2
    keras_kwargs = torch_spec.keras_kwargs("channels_first")
    assert keras_kwargs == {
        "group": "hr", "axis": 1, "momentum": 0.75, "epsilon": 1e-4, "center": True,
        "scale": True,
    }  # fmt: skip
    del keras_kwargs["axis"]
    keras_spec = GroupBatchNormSpec.from_keras(**keras_kwargs).with_input(2, 16)
    assert keras_spec == torch_spec  # 1 - (1 - 0.25) is 0.25 exactly
    assert keras_spec.describe_mismatch(torch_spec, strict=True) is None
    # 1 - m is rounded to 12 decimals both ways: Keras' 0.99 is torch's 0.01, and back.
    a = GroupBatchNormSpec.from_keras("hr", momentum=0.99).with_input(2, 16)
    b = symconv.GroupBatchNorm2d(16, "hr", eps=1e-3, momentum=0.01).spec
    assert a.momentum == 0.01 and a == b and a.describe_mismatch(b, strict=True) is None
    assert symconv.GroupBatchNorm2d(16, "hr", momentum=0.1).spec.keras_kwargs()["momentum"] == 0.9
    assert symconv.GroupBatchNorm2d(**a.torch_kwargs_from_keras()).spec == a
    # The rank and the channels are part of the pair: a copy between them would broadcast.
    c = symconv.GroupBatchNorm2d(32, "hr", eps=1e-3, momentum=0.01).spec
    assert a.describe_mismatch(c, strict=False) == (
        "mismatched channels: the torch layer has 16, the Keras layer 32"
    )
    d = GroupBatchNormSpec.from_keras("h", momentum=0.99).with_input(1, 16)
    e = symconv.GroupBatchNorm2d(16, "h", eps=1e-3, momentum=0.01).spec
    assert "mismatched spatial axes: the torch layer has 2, the Keras layer 1" == (
        e.describe_mismatch(d, strict=False)
    )


@pytest.mark.parametrize(
    ("spec_args", "match"),
    [
        ({"momentum": None}, r"momentum=None \(a cumulative average\) has no Keras equivalent"),
        ({"track_running_stats": False}, r"track_running_stats=False has no Keras equivalent"),
        ({"eps": 0.0}, r"eps=0.0 has no Keras equivalent: Keras' epsilon must be > 0"),
    ],
)
def test_group_batch_norm_settings_without_a_keras_twin_say_so(spec_args, match):
    spec = symconv.GroupBatchNorm2d(8, "hr", **spec_args).spec
    with pytest.raises(ValueError, match=match):
        spec.keras_kwargs()


def test_group_batch_norm_spec_from_keras_checks_its_arguments_and_rank():
    from symconv.core.group_norm import GroupBatchNormSpec

    with pytest.raises(ValueError, match=r"^momentum=1.5 is not allowed; it must be a number"):
        GroupBatchNormSpec.from_keras("hr", momentum=1.5)
    with pytest.raises(ValueError, match=r"^epsilon=0.0 is not allowed; it must be a finite"):
        GroupBatchNormSpec.from_keras("hr", epsilon=0.0)
    spec = GroupBatchNormSpec.from_keras("hr", center=True, scale=False)
    with pytest.raises(ValueError, match=r"^center=True with scale=False has no torch equivalent"):
        spec.with_input(2, 16).torch_kwargs_from_keras()
    with pytest.raises(ValueError, match=r"channels=12 is not allowed; it must be a multiple of 8"):
        spec.with_input(2, 12)
    with pytest.raises(ValueError, match=r"'hr'"):  # a quarter turn needs two spatial axes
        spec.with_input(1, 16)
    with pytest.raises(ValueError, match=r"^spec is for 3 spatial axes; GroupBatchNorm2d takes "
                       r"2 \(use GroupBatchNorm3d\)$"):  # fmt: skip
        symconv.GroupBatchNorm2d.from_spec(GroupBatchNormSpec.from_keras("hv").with_input(3, 8))
    with pytest.raises(TypeError, match=r"^spec=5 must be a GroupBatchNormSpec, got int$"):
        symconv.GroupBatchNorm2d.from_spec(5)
    with pytest.raises(ValueError, match=r"no input rank and channels yet .* build the layer"):
        symconv.GroupBatchNorm2d.from_spec(spec)
    with pytest.raises(ValueError, match=r"rotation keys need a 2-D layer"):
        spec.with_input(3, 16)
    with pytest.raises(ValueError, match=r"no input rank and channels yet"):
        symconv.GroupBatchNorm2d.from_spec(replace(spec, ndim=2))


def test_group_batch_norm_names_its_channels_in_input_errors():
    norm = symconv.GroupBatchNorm2d(8, "hr")
    with pytest.raises(ValueError, match=r"channels=8\) expects input of shape \(N, 8, ...\)"):
        norm(torch.randn(2, 16, 4, 4))
    assert "2," not in repr(norm) and eval(f"symconv.{norm!r}").channels == 8  # noqa: S307


def test_signatures_show_the_conv_arguments_and_the_family_keywords():
    import inspect

    params = inspect.signature(symconv.GroupConv2d).parameters
    assert list(params)[:3] == ["in_channels", "out_channels", "kernel_size"]
    assert params["group"].kind is inspect.Parameter.KEYWORD_ONLY
    params = inspect.signature(symconv.SymmetricConv2d).parameters
    assert {"padding_mode", "dtype", "symmetry", "share_bias"} <= set(params)


@pytest.mark.parametrize(
    ("cls", "extra", "keywords"),
    [
        (symconv.GroupConv2d, "hr", "pass group by keyword"),
        (symconv.SymmetricConv2d, {"h": 2}, "pass symmetry and share_bias by keyword"),
        (symconv.GroupConv1d, "h", "pass group by keyword"),
    ],
)
def test_family_option_by_position_is_named(cls, extra, keywords):
    """nn.ConvNd's 11 positional arguments, then the family's option by position."""
    args = (8, 16, 3, 1, 1, 1, 1, True, "zeros", None, None, extra)
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\(\) takes at most 11 positional "
                       rf"arguments \(nn\.Conv\dd's\), got 12; {keywords}$"):  # fmt: skip
        cls(*args)
