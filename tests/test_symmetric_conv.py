"""SymmetricConv1d/2d/3d against a naive reference, equivariance, gradients, caching."""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from symconv import (
    GroupConv2d,
    OrbitPool,
    SymmetricConv1d,
    SymmetricConv2d,
    SymmetricConv3d,
    flip_permutation,
)
from symconv.symmetry import allowed_keys

LAYERS = {1: SymmetricConv1d, 2: SymmetricConv2d, 3: SymmetricConv3d}
PLAIN = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
LETTER_DIM = {1: {"h": 2}, 2: {"h": 3, "v": 2}, 3: {"h": 4, "v": 3, "z": 2}}


def reference(layer, x):
    """Straight from the definition: flip each free filter per channel, then F.convNd."""
    plan, nd = layer.plan, layer.plan.ndim
    filters = []
    for c in range(layer.out_channels):
        dims = [1 + int(a) for a in np.flatnonzero(plan.flips[c])]
        f = layer.weight[int(plan.free_index[c])]
        filters.append(f.flip(dims) if dims else f)
    weight = torch.stack(filters)
    bias = None
    if layer.bias is not None:
        bias = torch.stack([layer.bias[int(plan.bias_index[c])] for c in range(layer.out_channels)])
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    else:
        padding = layer.padding
    return CONV_FN[nd](x, weight, bias, layer.stride, padding, layer.dilation, layer.groups)


@st.composite
def layer_configs(draw, ndim=None):
    nd = ndim or draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    if groups == 1:
        spec, out = {}, 0
        for key in draw(st.lists(st.sampled_from(allowed_keys(nd)), unique=True, max_size=3)):
            n = draw(st.integers(0, 2)) * 2 ** len(key)
            if n:
                spec[key] = n
                out += n
        out += draw(st.integers(0 if out else 1, 3))
    else:
        # Whole groups of one key, so every orbit lies inside one group.
        key = draw(st.sampled_from(allowed_keys(nd)))
        per_group = 2 ** len(key) * draw(st.integers(1, 2))
        out = groups * per_group
        spec = {key: per_group * draw(st.integers(0, groups))}
    ks = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    pad = draw(st.sampled_from(["int", "valid", "same"]))
    if pad == "same":
        stride = (1,) * nd
    elif pad == "int":
        pad = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    size = tuple(
        draw(st.integers(d * (k - 1) + 3, d * (k - 1) + 6))
        for k, d in zip(ks, dilation, strict=True)
    )
    return dict(
        ndim=nd,
        in_channels=cin,
        out_channels=out,
        kernel_size=ks,
        stride=stride,
        padding=pad,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"])),
        symmetry=spec,
        share_bias=draw(st.booleans()),
        batch=draw(st.sampled_from([0, 1, 2])),
        size=size,
    )


def build(cfg, dtype=torch.float64, device="cpu"):
    cfg = dict(cfg)
    nd, batch, size = cfg.pop("ndim"), cfg.pop("batch"), cfg.pop("size")
    layer = LAYERS[nd](**cfg, device=device, dtype=dtype)
    x = torch.randn(batch, cfg["in_channels"], *size, dtype=dtype, device=device)
    return layer, x


@given(layer_configs())
def test_matches_naive_reference(cfg):
    torch.manual_seed(0)
    layer, x = build(cfg)
    torch.testing.assert_close(layer(x), reference(layer, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_reference_device_dtype_batch(device, dtype, batch):
    torch.manual_seed(1)
    layer = SymmetricConv2d(
        3,
        16,
        (3, 5),
        padding=(1, 2),
        symmetry={"h": 2, "v": 4, "hv": 8},
        device=device,
        dtype=dtype,
    )
    x = torch.randn(batch, 3, 9, 6, device=device, dtype=dtype)  # non-square, H != W
    out = layer(x)
    assert out.shape == (batch, 16, 9, 6)
    torch.testing.assert_close(out, reference(layer, x))


@given(st.sampled_from([1, 2, 3]), st.data())
def test_exact_flip_equivariance(nd, data):
    torch.manual_seed(2)
    keys = allowed_keys(nd)
    spec = {k: 2 ** len(k) * data.draw(st.integers(0, 2)) for k in keys}
    out = sum(spec.values()) + data.draw(st.integers(0, 2))
    if out == 0:
        return
    ks = tuple(data.draw(st.sampled_from([1, 3, 5])) for _ in range(nd))
    stride = data.draw(st.sampled_from([1, 2]))
    # Sizes the stride divides after symmetric padding, so flips commute with sampling.
    size = tuple(stride * data.draw(st.integers(1, 3)) + k - 2 * (k // 2) for k in ks)
    layer = LAYERS[nd](
        2,
        out,
        ks,
        stride=stride,
        padding=tuple(k // 2 for k in ks),
        symmetry=spec,
        dtype=torch.float64,
    )
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    y = layer(x)
    pool = OrbitPool(layer)
    for r in range(1, nd + 1):
        for axes in ("hvz"[:nd][:r], "hvz"[:nd][r - 1 :]):
            dims = [LETTER_DIM[nd][a] for a in axes]
            perm, eq = flip_permutation(layer, axes)
            y_flip = layer(x.flip(dims))
            torch.testing.assert_close(
                y_flip[:, eq], y.flip(dims)[:, perm][:, eq], rtol=0, atol=1e-12
            )
            # Orbit pooling removes the permutation: pooled maps just flip.
            orbit_eq = torch.zeros(layer.plan.n_free, dtype=torch.bool)
            orbit_eq[torch.as_tensor(layer.plan.free_index.copy())[eq]] = True
            torch.testing.assert_close(
                pool(y_flip)[:, orbit_eq], pool(y).flip(dims)[:, orbit_eq], rtol=0, atol=1e-12
            )
            inv = pool(y_flip).mean(dims)
            torch.testing.assert_close(inv[:, orbit_eq], pool(y).mean(dims)[:, orbit_eq])


def test_share_bias_false_breaks_exact_equivariance_only_through_bias():
    torch.manual_seed(3)
    layer = SymmetricConv2d(1, 4, 3, padding=1, symmetry={"h": 4}, share_bias=False).double()
    assert layer.bias.shape == (4,)
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    perm, _ = flip_permutation(layer, "h")
    diff = layer(x.flip(3)) - layer(x).flip(3)[:, perm]
    bias_diff = layer.bias - layer.bias[perm]
    torch.testing.assert_close(diff, bias_diff.view(1, 4, 1, 1).expand_as(diff))


@pytest.mark.parametrize(
    ("nd", "key", "ratio"),
    [
        (1, "h", 0.5),
        (2, "h", 0.5),
        (2, "v", 0.5),
        (2, "hv", 0.25),
        (3, "z", 0.5),
        (3, "vz", 0.25),
        (3, "hvz", 0.125),
    ],
)
def test_parameter_counts(nd, key, ratio):
    plain = PLAIN[nd](4, 16, 3, bias=False)
    sym = LAYERS[nd](4, 16, 3, bias=False, symmetry={key: 16})
    assert sum(p.numel() for p in sym.parameters()) == ratio * sum(
        p.numel() for p in plain.parameters()
    )
    half = LAYERS[nd](4, 16, 3, bias=True, symmetry={key: "50%"})
    expected_w = (8 * ratio + 8) * 4 * 3**nd
    expected_b = 8 * ratio + 8
    assert half.weight.numel() == expected_w and half.bias.numel() == expected_b


def test_seed_example():
    layer = SymmetricConv2d(1, 16, 3, symmetry={"h": 2, "v": 4, "hv": 8})
    assert layer.weight.shape == (7, 1, 3, 3)
    assert layer.expanded_weight.shape == (16, 1, 3, 3)
    w = layer.expanded_weight.detach()
    torch.testing.assert_close(w[1], w[0].flip(2))  # h pair: left-right
    torch.testing.assert_close(w[3], w[2].flip(1))  # v pair: up-down
    torch.testing.assert_close(w[7], w[6].flip(2))
    torch.testing.assert_close(w[8], w[6].flip(1))
    torch.testing.assert_close(w[9], w[6].flip(1, 2))


def test_gradcheck():
    torch.manual_seed(4)
    for nd, spec in ((1, {"h": 2}), (2, {"h": 2, "v": 2, "hv": 4}), (3, {"hvz": 8})):
        layer = LAYERS[nd](2, 9, 3, padding=1, symmetry=spec, dtype=torch.float64)
        x = torch.randn(2, 2, *([4] * nd), dtype=torch.float64, requires_grad=True)

        def fn(x, w, b, layer=layer):
            return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

        assert torch.autograd.gradcheck(fn, (x, layer.weight, layer.bias))
        assert torch.autograd.gradgradcheck(fn, (x, layer.weight, layer.bias))


def test_state_dict_round_trip_and_train_eval_keys(tmp_path):
    torch.manual_seed(5)
    layer = SymmetricConv3d(2, 8, (3, 1, 3), symmetry={"hz": 4, "h": 2})
    train_sd = {k: v.shape for k, v in layer.state_dict().items()}
    layer.eval()
    eval_sd = {k: v.shape for k, v in layer.state_dict().items()}
    assert train_sd == eval_sd == {"weight": (1 + 1 + 2, 2, 3, 1, 3), "bias": (4,)}
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = SymmetricConv3d(2, 8, (3, 1, 3), symmetry={"hz": 4, "h": 2})
    other.load_state_dict(torch.load(buf))
    x = torch.randn(1, 2, 4, 4, 4)
    torch.testing.assert_close(other(x), layer(x))
    path = tmp_path / "m.pt"
    torch.save(layer, path)
    loaded = torch.load(path, weights_only=False)
    torch.testing.assert_close(loaded(x), layer(x))
    deep = copy.deepcopy(layer)
    torch.testing.assert_close(deep(x), layer(x))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_to_conv_and_from_conv(nd):
    torch.manual_seed(6)
    spec = {"h": 2} if nd == 1 else {"hv": 4, "h": 2} if nd == 2 else {"hvz": 8}
    layer = LAYERS[nd](3, 10, 3, stride=2, padding=1, symmetry=spec)
    conv = layer.to_conv()
    assert type(conv) is PLAIN[nd]
    x = torch.randn(2, 3, *([7] * nd))
    torch.testing.assert_close(conv(x), layer(x))
    back = LAYERS[nd].from_conv(conv, spec)
    torch.testing.assert_close(back.weight, layer.weight)
    torch.testing.assert_close(back.bias, layer.bias)
    # A conv without the symmetry is projected: the orbit average of un-flipped members.
    plain = PLAIN[nd](3, 10, 3)
    proj = LAYERS[nd].from_conv(plain, spec)
    expected = proj.plan.project(plain.weight.detach().numpy())
    np.testing.assert_allclose(proj.weight.detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="needs a plain nn.Conv"):
        LAYERS[nd].from_conv(layer, spec)
    with pytest.raises(ValueError, match="asks for 16 channels"):
        LAYERS[nd].from_conv(plain, {"h": 16})


def test_cache_in_no_grad_and_invalidation():
    torch.manual_seed(7)
    layer = SymmetricConv2d(2, 8, 3, symmetry={"hv": 8})
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        w1 = layer.expanded_weight
        assert layer.expanded_weight is w1  # cached
    # Training mode with grad: never the cached tensor, and gradients reach the free weight.
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    opt.step()  # in-place update bumps the version counter
    with torch.no_grad():
        w2 = layer.expanded_weight
    assert w2 is not w1
    torch.testing.assert_close(w2, layer.expanded()[0].detach())  # computed afresh
    # load_state_dict
    other = SymmetricConv2d(2, 8, 3, symmetry={"hv": 8})
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), other(x))
    # torch.nn.init on the free parameter
    nn.init.constant_(layer.weight, 0.5)
    with torch.no_grad():
        assert torch.all(layer.expanded_weight == 0.5)
    # .to() changes dtype and storage
    layer.double()
    with torch.no_grad():
        assert layer.expanded_weight.dtype == torch.float64
        assert layer(x.double()).dtype == torch.float64
    # writes through .data need clear_cache()
    with torch.no_grad():
        layer.expanded_weight  # noqa: B018 - fill the cache
    layer.weight.data.fill_(2.0)
    layer.clear_cache()
    with torch.no_grad():
        assert torch.all(layer.expanded_weight == 2.0)


def test_inference_mode_cache_does_not_leak_into_autograd():
    layer = SymmetricConv2d(1, 4, 3, symmetry={"hv": 4}).requires_grad_(False)
    x = torch.randn(1, 1, 5, 5)
    with torch.inference_mode():
        layer(x)
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()  # would fail if an inference tensor were reused
    assert xg.grad is not None


def test_eval_mode_with_grad_still_trains():
    layer = SymmetricConv2d(1, 4, 3, symmetry={"hv": 4}).eval()
    layer(torch.randn(1, 1, 5, 5)).sum().backward()
    assert layer.weight.grad is not None


@pytest.mark.parametrize(
    ("device", "dtype"),
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.bfloat16, marks=pytest.mark.requires_cuda),
        pytest.param("cuda", torch.float16, marks=pytest.mark.requires_cuda),
    ],
)
def test_autocast_and_channels_last(device, dtype):
    torch.manual_seed(8)
    layer = SymmetricConv2d(4, 8, 3, padding=1, symmetry={"hv": 4, "h": 2}, device=device)
    x = torch.randn(2, 4, 6, 10, device=device)
    ref = layer(x)
    layer = layer.to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(xc), ref, rtol=1e-5, atol=1e-5)
    with torch.autocast(device_type=device, dtype=dtype):
        out = layer(xc)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)
    out.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.requires_inductor
def test_torch_compile_inductor():
    torch.manual_seed(10)
    layer = SymmetricConv2d(2, 8, 3, padding=1, symmetry={"hv": 8})
    x = torch.randn(2, 2, 6, 5)
    torch.testing.assert_close(torch.compile(layer)(x), layer(x))


@pytest.mark.slow
@pytest.mark.requires_inductor
def test_torch_compile_inductor_with_symbolic_sizes():
    """Inductor with symbolic parameter sizes (``dynamic=True``, or automatic dynamic shapes
    after the same forward was compiled for layers of other sizes)."""
    torch.manual_seed(11)
    layer = SymmetricConv2d(2, 8, 3, padding=1, symmetry={"hv": 4, "h": 2})
    x = torch.randn(2, 2, 6, 5)
    compiled = torch.compile(layer, dynamic=True)
    torch.testing.assert_close(compiled(x), layer(x))
    want = torch.autograd.grad(layer(x).square().sum(), layer.weight)[0]
    got = torch.autograd.grad(compiled(x).square().sum(), layer.weight)[0]
    torch.testing.assert_close(got, want)


def test_nn_init_on_parameters():
    layer = SymmetricConv2d(3, 8, 3, symmetry={"hv": 8})
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    with torch.no_grad():
        w = layer.expanded_weight
    torch.testing.assert_close(w[1], w[0].flip(2))
    assert torch.all(layer.expanded_bias == 0)


def test_default_init_matches_plain_conv_distribution():
    torch.manual_seed(11)
    sym = SymmetricConv2d(64, 64, 3, symmetry={"hv": 64})
    plain = nn.Conv2d(64, 64, 3)
    bound = plain.weight.abs().max().item()
    assert abs(sym.weight.abs().max().item() - bound) < 0.01 * bound
    assert (
        abs(sym.weight.std().item() - plain.weight.std().item()) < 0.05 * plain.weight.std().item()
    )


def test_extra_repr_and_docs():
    layer = SymmetricConv2d(3, 16, 3, symmetry={"vh": "50%"}, share_bias=False)
    assert "symmetry={'hv': '50%'}" in repr(layer) and "share_bias=False" in repr(layer)
    assert "SymmetricConv2d" in SymmetricConv2d.__doc__


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"symmetry": {"z": 2}}, ValueError, "needs the z axis"),
        ({"symmetry": {"hv": 6}}, ValueError, "not a multiple of the orbit size 4"),
        ({"symmetry": {"h": "200%"}}, ValueError, "outside 0%-100%"),
        ({"symmetry": {"h": 18}}, ValueError, "but the layer has out_channels=16"),
        ({"symmetry": {"q": 2}}, ValueError, "unknown symmetry key 'q'"),
        ({"symmetry": 3}, TypeError, "symmetry=3 must be a dict"),
        ({"share_bias": "yes"}, TypeError, "share_bias='yes' must be a bool"),
        (
            {"symmetry": {"h": 2}, "groups": 16, "in_channels": 16},
            ValueError,
            "straddle two groups",
        ),
    ],
)
def test_invalid_arguments(kwargs, exc, match):
    args = {"in_channels": 2, "out_channels": 16, "kernel_size": 3} | kwargs
    with pytest.raises(exc, match=match):
        SymmetricConv2d(**args)


def test_orbit_pool_matches_naive():
    torch.manual_seed(12)
    layer = SymmetricConv2d(1, 12, 3, symmetry={"h": 2, "hv": 8})
    x = torch.randn(2, 12, 3, 4)
    plan = layer.plan
    for mode, red in (("max", lambda t: t.amax(1)), ("mean", lambda t: t.mean(1))):
        out = OrbitPool(layer, mode)(x)
        assert out.shape == (2, plan.n_free, 3, 4)
        for f in range(plan.n_free):
            members = np.flatnonzero(plan.free_index == f)
            torch.testing.assert_close(out[:, f], red(x[:, members]))
    with pytest.raises(ValueError, match="mode='min' is not allowed"):
        OrbitPool(layer, "min")
    with pytest.raises(TypeError, match="must be a SymmetryPlan or a layer"):
        OrbitPool(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 12, ...\)"):
        OrbitPool(layer)(torch.randn(2, 5, 3, 3))


def test_import_symconv_imports_no_optional_dependency():
    # Baseline: what `import torch` itself loads (it imports tqdm when installed).
    code = (
        "import sys, torch; base = set(sys.modules); import symconv; symconv.SymmetricConv2d; "
        "symconv.OrbitPool; symconv.make_plan; "
        "opt = ('keras', 'tensorflow', 'matplotlib', 'PIL', 'tqdm', 'onnx', 'sklearn'); "
        "bad = [m for m in set(sys.modules) - base if m.split('.')[0] in opt]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("nd", [2, 3])
def test_channels_last_expansion_keeps_layout(nd):
    torch.manual_seed(15)
    fmt = torch.channels_last if nd == 2 else torch.channels_last_3d
    layer = LAYERS[nd](3, 8, 3, padding=1, symmetry={"hv": 4, "h": 2}, dtype=torch.float64)
    ref_w = layer.expanded_weight.detach().clone()
    x = torch.randn(2, 3, *([5] * nd), dtype=torch.float64)
    ref = layer(x)
    layer = layer.to(memory_format=fmt)
    w = layer.expanded_weight
    assert w.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(w, ref_w, rtol=0, atol=0)
    torch.testing.assert_close(layer(x.to(memory_format=fmt)), ref)
    w_free = layer.weight.detach().clone().requires_grad_()

    def fn(wf):
        return torch.func.functional_call(layer, {"weight": wf, "bias": layer.bias}, (x,))

    assert torch.autograd.gradcheck(fn, (w_free.to(memory_format=fmt),))


@pytest.mark.parametrize("share_bias", [True, False])
def test_index_tensors_start_on_the_parameters_device(share_bias):
    # Built with device=..., the layer never passes through `_apply`; its derived index
    # tensors must still live beside the parameters (CUDA layers failed with a CPU index).
    layer = SymmetricConv2d(
        4, 8, 3, symmetry={"hv": 4, "h": 2}, share_bias=share_bias, device="meta"
    )
    derived = [t for t in (layer._index, layer._bias_index) if t is not None]
    assert derived and all(t.device == layer.weight.device for t in derived)


# -- constructor arguments -----------------------------------------------------------------
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"in_channels": 0}, ValueError, r"in_channels=0 is not allowed; it must be an int >= 1"),
        ({"out_channels": 0}, ValueError, r"out_channels=0 is not allowed; it must be an int >= 1"),
        ({"out_channels": -4}, ValueError, r"out_channels=-4 is not allowed"),
        ({"in_channels": 2.0}, TypeError, r"in_channels=2.0 must be an int >= 1, got float"),
        ({"out_channels": "8"}, TypeError, r"out_channels='8' must be an int >= 1, got str"),
        ({"kernel_size": 0}, ValueError, r"kernel_size=0 is not allowed; it must be an int >= 1"),
        ({"kernel_size": 3.0}, TypeError, r"kernel_size=3.0 must be an int >= 1 or a tuple"),
        ({"kernel_size": (3,) * 4}, ValueError, r"kernel_size=\(3, 3, 3, 3\) has 4 entries"),
        ({"stride": 0}, ValueError, r"stride=0 is not allowed; it must be an int >= 1"),
        ({"padding": -1}, ValueError, r"padding=-1 is not allowed; it must be an int >= 0"),
        (
            {"padding": "full"},
            ValueError,
            r"padding='full' is not allowed; it must be one of 'same', 'valid'",
        ),
        ({"dilation": 0}, ValueError, r"dilation=0 is not allowed"),
        ({"groups": 0}, ValueError, r"groups=0 is not allowed; it must be an int >= 1"),
        ({"bias": 1}, TypeError, r"bias=1 must be a bool"),
    ],
)
def test_invalid_conv_arguments(nd, kwargs, exc, match):
    args = {"in_channels": 2, "out_channels": 8, "kernel_size": 3, "symmetry": {"h": 2}} | kwargs
    with pytest.raises(exc, match=match):
        LAYERS[nd](**args)


@pytest.mark.parametrize("nd", [2, 3])
def test_invalid_conv_argument_tuples(nd):
    with pytest.raises(ValueError, match=r"padding=\(1, -1.*\) is not allowed"):
        LAYERS[nd](2, 8, 3, padding=(1, -1, 1)[:nd])
    with pytest.raises(ValueError, match=r"stride=\(1, 0.*\) is not allowed"):
        LAYERS[nd](2, 8, 3, stride=(1, 0, 1)[:nd])
    with pytest.raises(TypeError, match=r"kernel_size=\(3, None.*\) must be an int >= 1"):
        LAYERS[nd](2, 8, (3, None, 3)[:nd])
    assert LAYERS[nd](2, 8, [3] * nd, padding=[1] * nd, symmetry={"h": 2}).padding == (1,) * nd


# -- deployment: to_conv's mode, TorchScript, FX, jit.trace ---------------------------------
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("train", [False, True])
def test_to_conv_and_from_conv_keep_mode(nd, train):
    layer = LAYERS[nd](3, 8, 3, padding=1, symmetry={"h": 4}).train(train)
    conv = layer.to_conv()
    assert conv.training is train and conv.weight.requires_grad
    assert LAYERS[nd].from_conv(conv, {"h": 4}).training is train
    layer.requires_grad_(False)
    assert not any(p.requires_grad for p in layer.to_conv().parameters())
    frozen = LAYERS[nd].from_conv(layer.to_conv(), {"h": 4})
    assert not any(p.requires_grad for p in frozen.parameters())
    # Parameter by parameter: a frozen kernel with a trained bias stays so both ways.
    layer.bias.requires_grad_(True)
    conv = layer.to_conv()
    assert (conv.weight.requires_grad, conv.bias.requires_grad) == (False, True)
    back = LAYERS[nd].from_conv(conv, {"h": 4})
    assert (back.weight.requires_grad, back.bias.requires_grad) == (False, True)
    group_layer = GroupConv2d(8, 8, 3, group="hr")
    group_layer.weight.requires_grad_(False)
    conv = group_layer.to_conv()
    assert (conv.weight.requires_grad, conv.bias.requires_grad) == (False, True)


def test_to_conv_fuses_with_batch_norm():
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(30)
    layer = SymmetricConv2d(3, 8, 3, padding=1, symmetry={"hv": 4})
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(layer, bn).eval()
    fused = fuse_conv_bn_eval(model[0].to_conv(), model[1])
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [SymmetricConv1d, SymmetricConv2d, SymmetricConv3d, "pool"])
def test_jit_script_raises_a_clear_error(layer):
    conv = SymmetricConv2d(2, 4, 3, symmetry={"h": 2})
    module = OrbitPool(conv) if layer == "pool" else layer(2, 4, 3, symmetry={"h": 2})
    name = type(module).__name__
    with pytest.raises(TypeError, match=rf"torch.jit.script does not support {name}; use "):
        torch.jit.script(module)
    with pytest.raises(TypeError, match=rf"does not support {name}"):
        torch.jit.script(nn.Sequential(nn.Identity(), module))  # nested too


def _sym_model(nd: int = 2) -> nn.Module:
    torch.manual_seed(31)
    spec = {"h": 2} if nd == 1 else {"hv": 4, "h": 2}
    conv = LAYERS[nd](3, 8, 3, padding=1, symmetry=spec)
    pool = OrbitPool(conv, "max")
    head = LAYERS[nd](pool.out_channels, 6, 3, symmetry=spec)
    return nn.Sequential(conv, nn.ReLU(), pool, head)


@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fx_symbolic_trace_same_outputs_and_gradients(nd, channels_last):
    model = _sym_model(nd).double()
    x = torch.randn(2, 3, *([7] * nd), dtype=torch.float64)
    if channels_last and nd == 2:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    graph = torch.fx.symbolic_trace(model)
    # the symmetric layers' forward is traced through (no leaf calls), the check kept
    targets = {n.target for n in graph.graph.nodes if n.op == "call_function"}
    assert torch.nn.functional.__dict__[f"conv{nd}d"] in targets
    assert any(getattr(t, "__name__", "") == "_check_orbit_input" for t in targets)
    results = []
    for m in (graph, model):
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append([out.detach(), xi.grad, *(p.grad for p in m.parameters())])
    assert len(results[0]) == len(results[1]) == 2 + 4
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"OrbitPool expects input of shape \(N, 8, ...\)"):
        torch.fx.symbolic_trace(model[2])(torch.randn(2, 5, 3, 3))


def test_fx_trace_under_no_grad_does_not_cache():
    model = _sym_model().eval()
    with torch.no_grad():
        graph = torch.fx.symbolic_trace(model)
        assert model[0]._cache is None
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x))
    with torch.no_grad():
        model[0].weight.mul_(2)  # the traced graph reads the live parameters
        torch.testing.assert_close(graph(x), model(x))


def test_jit_trace_saves_and_loads(tmp_path):
    model = _sym_model().eval()
    x = torch.randn(2, 3, 7, 7)
    traced = torch.jit.trace(model, (x,))
    path = tmp_path / "sym.pt"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    x2 = torch.randn(3, 3, 9, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x2), model(x2))
    # training through the traced module reaches the free parameters like the eager one
    model.train()
    traced = torch.jit.trace(model, (x,))
    traced(x).sum().backward()
    ref = copy.deepcopy(model)
    ref.zero_grad()
    ref(x).sum().backward()
    torch.testing.assert_close(traced.state_dict()["0.weight"], ref[0].weight)
    torch.testing.assert_close(model[0].weight.grad, ref[0].weight.grad)


def test_torch_export_same_outputs():
    model = _sym_model().eval()
    x = torch.randn(2, 3, 7, 7)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))
