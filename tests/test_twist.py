"""ConvTwist against a reference written straight from the formula

    out = conv(x, W) + (X - cx) * conv(x, Wx) + (Y - cy) * conv(x, Wy) (+ bias),
    X[j] = 2 j / W_out,  Y[i] = 2 i / H_out,

plus gradients, oddness under training, init, conversion, autocast, compile, state_dict,
ONNX, DDP and the post's rotation/scaling demonstration.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from post_conv_twist import PostConvTwist
from torch import nn

from symconv import ConvTwist

MODES = ("zeros", "reflect", "replicate", "circular")
IMPLS = ("stacked", "split", "taps")  # the forward paths; 'auto' picks one of them

# Sobel kernels from the post. Under cross-correlation on a grid whose row index grows
# downwards, A ~ +8 d/d(col) and B ~ -8 d/d(row).
SOBEL_A = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_B = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


# -- the reference ---------------------------------------------------------------------------
def odd_reference(free: torch.Tensor, k: int) -> torch.Tensor:
    """Odd kernel from free taps, tap by tap: row-major tap i is +t_i, tap k*k-1-i is -t_i."""
    out = torch.zeros(*free.shape[:-1], k * k, dtype=free.dtype, device=free.device)
    for i in range(free.shape[-1]):
        out[..., i] = free[..., i]
        out[..., k * k - 1 - i] = -free[..., i]
    return out.reshape(*free.shape[:-1], k, k)


def twist_reference(layer: ConvTwist, x: torch.Tensor) -> torch.Tensor:
    """Three separate convolutions and explicit grids, exactly as the formula reads."""
    k = layer.kernel_size[0]
    p = k // 2
    if layer.padding_mode == "zeros":
        xp, pad = x, p
    else:
        xp, pad = F.pad(x, (p, p, p, p), mode=layer.padding_mode), 0

    def conv(w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(xp, w, None, layer.stride, pad, 1, layer.groups)

    a = conv(layer.weight)
    b = conv(odd_reference(layer.twist_x, k))
    c = conv(odd_reference(layer.twist_y, k))
    h, w = a.shape[-2:]
    X = torch.tensor([[2 * j / w for j in range(w)] for _ in range(h)], dtype=x.dtype)
    Y = torch.tensor([[2 * i / h for _ in range(w)] for i in range(h)], dtype=x.dtype)
    X, Y = X.to(x.device), Y.to(x.device)
    cx = layer.center_x.view(-1, 1, 1)
    cy = layer.center_y.view(-1, 1, 1)
    out = a + (X - cx) * b + (Y - cy) * c
    if layer.bias is not None:
        out = out + layer.bias.view(-1, 1, 1)
    return out


@st.composite
def configs(draw: st.DrawFn) -> dict:
    groups = draw(st.sampled_from([1, 2, 3]))
    if draw(st.booleans()) and groups > 1:  # depthwise
        in_c = out_c = groups
    else:
        in_c = groups * draw(st.integers(1, 3))
        out_c = groups * draw(st.integers(1, 3))
    k = draw(st.sampled_from([3, 5]))
    mode = draw(st.sampled_from(MODES))
    lo = k // 2 + 1  # reflect/circular padding need pad < size
    return {
        "layer": {
            "in_channels": in_c,
            "out_channels": out_c,
            "kernel_size": k,
            "stride": draw(st.sampled_from([1, 2])),
            "groups": groups,
            "bias": draw(st.booleans()),
            "padding_mode": mode,
            "init_max": draw(st.sampled_from([0.0, 1.5])),
            "impl": draw(st.sampled_from(IMPLS)),
        },
        "shape": (
            draw(st.integers(0, 2)),
            in_c,
            draw(st.integers(lo, 11)),
            draw(st.integers(lo, 11)),
        ),
    }


def _all_grads(layer: nn.Module, x: torch.Tensor, out: torch.Tensor, gout: torch.Tensor):
    inputs = [x] + [p for p in layer.parameters()]
    return torch.autograd.grad(out, inputs, gout)


# -- forward and backward against the reference --------------------------------------------
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs(), seed=st.integers(0, 2**16))
def test_matches_reference(device: str, cfg: dict, seed: int) -> None:
    torch.manual_seed(seed)
    layer = ConvTwist(**cfg["layer"], device=device, dtype=torch.float64)
    x = torch.randn(cfg["shape"], dtype=torch.float64, device=device, requires_grad=True)
    out = layer(x)
    ref = twist_reference(layer, x)
    assert out.shape == ref.shape
    n, _, h, w = cfg["shape"]
    s = cfg["layer"]["stride"]
    assert out.shape == (n, layer.out_channels, (h - 1) // s + 1, (w - 1) // s + 1)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    gout = torch.randn_like(ref)
    for g, gr in zip(_all_grads(layer, x, out, gout), _all_grads(layer, x, ref, gout), strict=True):
        torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["auto", *IMPLS])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_float32_and_nonsquare(device: str, batch: int, impl: str) -> None:
    torch.manual_seed(0)
    layer = ConvTwist(6, 4, groups=2, bias=True, stride=2, device=device, impl=impl)
    x = torch.randn(batch, 6, 9, 14, device=device)
    out = layer(x)
    assert out.shape == (batch, 4, 5, 7)
    torch.testing.assert_close(out, twist_reference(layer, x), rtol=1e-5, atol=1e-5)


def test_x_follows_width_and_y_height() -> None:
    """W = 0, cx = cy = 0, a width ramp and a unit d/dcol kernel: out = X (or Y) inside."""
    layer = ConvTwist(1, 1, bias=False, init_max=0.0).double()
    ramp = torch.arange(9.0, dtype=torch.float64)
    x = ramp.view(1, 1, 1, 9).expand(1, 1, 5, 9).contiguous()  # grows along the width
    with torch.no_grad():
        layer.weight.zero_()
    e = torch.zeros(3, 3, dtype=torch.float64)
    e[1, 2], e[1, 0] = 0.5, -0.5  # central difference along the width: d/dcol = 1 inside
    layer.set_twist_kernels(e, torch.zeros(3, 3, dtype=torch.float64))
    out = layer(x)[0, 0, 2, 1:-1]
    torch.testing.assert_close(out, 2 * torch.arange(1, 8, dtype=torch.float64) / 9)
    layer.set_twist_kernels(torch.zeros(3, 3, dtype=torch.float64), e)
    out = layer(x)[0, 0, 1:-1, 4]
    torch.testing.assert_close(out, 2 * torch.arange(1, 4, dtype=torch.float64) / 5)


def test_unbatched_input() -> None:
    layer = ConvTwist(3, 5, bias=True)
    x = torch.randn(3, 6, 7)
    torch.testing.assert_close(layer(x), layer(x.unsqueeze(0)).squeeze(0))


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck(impl: str) -> None:
    torch.manual_seed(1)
    layer = ConvTwist(4, 2, groups=2, stride=2, bias=True, dtype=torch.float64, impl=impl)
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())

    def fn(x, *ps):
        return torch.func.functional_call(
            layer, dict(zip(dict(layer.named_parameters()), ps, strict=True)), x
        )

    assert torch.autograd.gradcheck(fn, (x, *params), fast_mode=True)
    # Second order for the tap path's custom backward, and once for the kernel construction
    # the other paths share.
    if impl in ("stacked", "taps"):
        assert torch.autograd.gradgradcheck(fn, (x, *params), fast_mode=True)
    # and the exact (slow-mode) Jacobian for the input and the twist parameters
    assert torch.autograd.gradcheck(
        lambda x, cx, tx: torch.func.functional_call(
            layer, {"center_x": cx, "twist_x": tx}, x, strict=False
        ),
        (x, layer.center_x.detach().requires_grad_(), layer.twist_x.detach().requires_grad_()),
    )


# -- the tap path's chunked custom autograd function -------------------------------------------
def _backward_route(monkeypatch: pytest.MonkeyPatch, backward: str | None) -> list[int]:
    """Make the tap path take the given backward at any dtype (``None``: as chosen by dtype);
    returns a list that counts the output-side backward's calls (so a test can check the
    route it meant to test ran)."""
    from symconv.nn import _twist_taps

    calls: list[int] = []
    inner = _twist_taps._output_side_backward

    def counted(*args: object) -> torch.Tensor | None:
        calls.append(1)
        return inner(*args)

    monkeypatch.setattr(_twist_taps, "_output_side_backward", counted)
    if backward is not None:  # the reduced-precision route; float64 takes it when allowed
        monkeypatch.setattr(
            _twist_taps, "_OUTPUT_SIDE_MAX_ITEMSIZE", 8 if backward == "output-side" else 0
        )
    return calls


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("groups", "stride", "mode", "backward"),
    [
        (1, 1, "zeros", "input-side"),
        (2, 2, "reflect", "input-side"),
        (1, 1, "zeros", "output-side"),
        (1, 1, "reflect", "output-side"),  # no padding inside: the border is k - 1
        (1, 1, "circular", "output-side"),
    ],
)
def test_taps_chunks_match_reference(
    monkeypatch: pytest.MonkeyPatch,
    channels_last: bool,
    groups: int,
    stride: int,
    mode: str,
    backward: str,
) -> None:
    """Chunks of 2 images over a batch of 5 (the last chunk short) give the reference's output
    and gradients, in either memory format, with either backward."""
    from symconv.nn import _twist_taps

    h, w = 7 * stride, 6 * stride
    hp, wp = (h, w) if mode == "zeros" else (h + 2, w + 2)  # the input the function sees
    per_image = 4 * 4 * 7 * 6 * 8  # (k*k-1)/2 taps x in channels x H_out x W_out x 8 bytes
    monkeypatch.setattr(_twist_taps, "_CHUNK_BYTES", 2 * per_image)
    monkeypatch.setattr(_twist_taps, "_WEIGHT_REUSE", 0)
    # output side: 4 taps x 2 x 6 out channels x the input's pixels x 8 bytes per image
    monkeypatch.setattr(_twist_taps, "_GRAD_CHUNK_BYTES", 2 * 4 * 2 * 6 * hp * wp * 8)
    calls = _backward_route(monkeypatch, backward)
    torch.manual_seed(3)
    layer = ConvTwist(
        4, 6, groups=groups, stride=stride, bias=True, padding_mode=mode, impl="taps"
    ).double()
    x = torch.randn(5, 4, h, w, dtype=torch.float64)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out, ref = layer(x), twist_reference(layer, x)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    gout = torch.randn_like(ref)
    for g, gr in zip(_all_grads(layer, x, out, gout), _all_grads(layer, x, ref, gout), strict=True):
        torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-10)
    assert len(calls) == (backward == "output-side")


@pytest.mark.parametrize("backward", ["input-side", "output-side"])
def test_taps_partial_gradients(monkeypatch: pytest.MonkeyPatch, backward: str) -> None:
    """Frozen parameters or an input without gradient: the other gradients are unchanged."""
    calls = _backward_route(monkeypatch, backward)
    torch.manual_seed(5)
    layer = ConvTwist(8, 8, impl="taps").double()
    x = torch.randn(3, 8, 6, 7, dtype=torch.float64, requires_grad=True)
    full = torch.autograd.grad(layer(x).square().sum(), [x, layer.twist_x])
    layer.requires_grad_(False)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), [x])
    torch.testing.assert_close(gx, full[0], rtol=1e-12, atol=1e-12)
    layer.requires_grad_(True)
    (gt,) = torch.autograd.grad(layer(x.detach()).square().sum(), [layer.twist_x])
    torch.testing.assert_close(gt, full[1], rtol=1e-12, atol=1e-12)
    assert len(calls) == (3 if backward == "output-side" else 0)


def test_taps_bfloat16_weight_gradient_sums_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over many chunks the twist taps' gradient is summed in float32, not rounded per chunk:
    as close to float64 as a single-chunk bfloat16 gradient."""
    from symconv.nn import _twist_taps

    torch.manual_seed(8)
    layer = ConvTwist(8, 8, impl="taps")
    x = torch.randn(256, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    ref_layer = copy.deepcopy(layer).double()
    ref = torch.autograd.grad(twist_reference(ref_layer, x.double()).sum(), [ref_layer.twist_x])[0]

    def grad_with_chunk_bytes(nbytes: int) -> torch.Tensor:
        monkeypatch.setattr(_twist_taps, "_CHUNK_BYTES", nbytes)
        monkeypatch.setattr(_twist_taps, "_GRAD_CHUNK_BYTES", nbytes)
        monkeypatch.setattr(_twist_taps, "_WEIGHT_REUSE", 0)
        with torch.autocast("cpu", torch.bfloat16):
            out = layer(x)
        return torch.autograd.grad(out.float().sum(), [layer.twist_x])[0].double()

    one_chunk = (grad_with_chunk_bytes(1 << 30) - ref).abs().max()
    # 256 chunks: summed in bfloat16 this was ~6x the one-chunk error, in float32 ~1.1x
    per_image = (grad_with_chunk_bytes(1) - ref).abs().max()
    assert per_image <= 2 * one_chunk


@pytest.mark.parametrize(
    ("groups", "stride", "channels_last"),
    # without groups at stride 1 the output-side backward (in place for channels-last);
    # at stride 2 the input side's per-tap products; with groups 1x1 convolutions
    [(1, 1, True), (1, 1, False), (1, 2, True), (2, 1, True)],
)
def test_taps_bfloat16_matches_float64(
    monkeypatch: pytest.MonkeyPatch, groups: int, stride: int, channels_last: bool
) -> None:
    """bfloat16 (its own GEMM routes) agrees with the float64 reference."""
    calls = _backward_route(monkeypatch, None)
    torch.manual_seed(7)
    layer = ConvTwist(16, 8, groups=groups, stride=stride, bias=True, impl="taps")
    x = torch.randn(3, 16, 9, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        out = layer(x)
    ref_layer = copy.deepcopy(layer).double()
    xd = x.detach().double().requires_grad_()
    ref = twist_reference(ref_layer, xd)
    assert out.dtype == torch.bfloat16
    assert (out.double() - ref).abs().max() / ref.abs().max() < 2e-2
    gout = torch.randn_like(ref)
    params = ["twist_x", "twist_y", "weight", "center_x", "center_y", "bias"]
    grads = torch.autograd.grad(out, [x] + [getattr(layer, p) for p in params], gout.bfloat16())
    refs = torch.autograd.grad(ref, [xd] + [getattr(ref_layer, p) for p in params], gout)
    for g, gr in zip(grads, refs, strict=True):
        assert (g.double() - gr).abs().max() / gr.abs().max() < 3e-2
    assert len(calls) == (groups == 1 and stride == 1)


@pytest.mark.parametrize(
    ("channels", "stride", "output_side"), [(64, 1, True), (64, 2, False), (512, 1, False)]
)
def test_taps_backward_route_choice(
    monkeypatch: pytest.MonkeyPatch, channels: int, stride: int, output_side: bool
) -> None:
    """bfloat16 on CPU takes the output-side backward at stride 1 unless the GEMM weight is
    large next to its chunk (512 channels), as measured in benchmarks/README.md."""
    calls = _backward_route(monkeypatch, None)
    layer = ConvTwist(channels, channels, stride=stride, impl="taps")
    x = torch.randn(2, channels, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        layer(x).float().sum().backward()
    assert len(calls) == output_side


def _saved_activation_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the batch-sized tensors (unique storages) autograd saves for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4 and t.shape[0] == x.shape[0]:  # not a kernel, a grid or a bias
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(storages.values())


@pytest.mark.parametrize("impl", IMPLS)
def test_saves_what_a_convolution_saves(impl: str) -> None:
    """Every path keeps only the layer's input for backward, as nn.Conv2d does (the tap
    path recomputes its differences instead of saving m times the input)."""
    x = torch.randn(5, 16, 20, 20, requires_grad=True)  # no kernel dimension is 5
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    twist = ConvTwist(16, 16, impl=impl)
    assert _saved_activation_bytes(conv, x) == x.numel() * 4
    assert _saved_activation_bytes(twist, x) == x.numel() * 4


def test_gemm_rows() -> None:
    """The GEMM view has at least 16 rows (oneDNN's threshold) and divides the pixels."""
    from symconv.nn._twist_tap_ops import gemm_rows

    for pixels in (1, 7, 16, 49, 196, 3136, 97, 12 * 12 * 5, 4099 * 5, 100_003):
        r = gemm_rows(pixels)
        assert pixels % r == 0
        assert r >= 16 or r == pixels
        assert r == pixels or not any(pixels % q == 0 for q in range(16, r))
        assert r <= 4096 or r == pixels


@pytest.mark.parametrize("impl", IMPLS)
def test_channels_last(device: str, impl: str) -> None:
    torch.manual_seed(2)
    layer = ConvTwist(8, 8, groups=2, bias=True, device=device, impl=impl)
    x = torch.randn(2, 8, 10, 12, device=device)
    ref = layer(x)
    cl_layer = copy.deepcopy(layer).to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last).requires_grad_()
    out = cl_layer(xc)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert xc.grad is not None and torch.isfinite(xc.grad).all()


@pytest.mark.parametrize("stride", [1, 2])
def test_matches_the_posts_layer(stride: int) -> None:
    torch.manual_seed(12)
    post = PostConvTwist(3, 5, stride=stride).double()
    layer = ConvTwist(3, 5, stride=stride, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(post.conv.weight)
        layer.center_x.copy_(post.center_x)
        layer.center_y.copy_(post.center_y)
    layer.set_twist_kernels(post.conv_x.weight, post.conv_y.weight)
    x = torch.randn(2, 3, 10, 13, dtype=torch.float64)
    torch.testing.assert_close(layer(x), post(x), rtol=1e-12, atol=1e-12)


# -- parametrization ---------------------------------------------------------------------------
def _assert_odd(k: torch.Tensor) -> None:
    c = k.shape[-1] // 2
    assert torch.equal(k, -k.flip(-1, -2))
    assert torch.equal(k[..., c, c], torch.zeros_like(k[..., c, c]))


@pytest.mark.parametrize("k", [3, 5, 7])
def test_init(k: int) -> None:
    torch.manual_seed(3)
    layer = ConvTwist(4, 6, kernel_size=k, groups=2, init_max=0.7)
    assert layer.twist_x.shape == (6, 2, (k * k - 1) // 2)
    wx, wy = layer.weight_x, layer.weight_y
    assert wx.shape == wy.shape == layer.weight.shape == (6, 2, k, k)
    _assert_odd(wx)
    _assert_odd(wy)
    assert torch.equal(wy, wx.transpose(2, 3).flip(3))  # the post's 90-degree rotation
    assert layer.center_x.abs().max() <= 0.7 and layer.center_y.abs().max() <= 0.7
    assert wx.abs().max() > 0
    # antisymmetrised kaiming-uniform entries: |Wx| <= 1/sqrt(fan_in)
    assert wx.abs().max() <= 1 / math.sqrt(2 * k * k) + 1e-7


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_kernels_stay_odd_under_training(make_opt) -> None:
    torch.manual_seed(4)
    layer = ConvTwist(3, 4, kernel_size=5, bias=True)
    before = layer.weight_x.detach().clone()
    opt = make_opt(layer.parameters())
    x, target = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8)
    for _ in range(4):
        opt.zero_grad()
        F.mse_loss(layer(x), target).backward()
        opt.step()
    assert not torch.equal(layer.weight_x, before)  # training did move the kernels
    _assert_odd(layer.weight_x.detach())
    _assert_odd(layer.weight_y.detach())


def test_set_twist_kernels() -> None:
    layer = ConvTwist(2, 3, kernel_size=3)
    wx = torch.randn(3, 2, 3, 3)
    wx = wx - wx.flip(2, 3)
    layer.set_twist_kernels(wx, 0.01 * SOBEL_B)  # a single (k, k) kernel broadcasts
    torch.testing.assert_close(layer.weight_x, wx / 1)
    assert torch.equal(layer.weight_y, (0.01 * SOBEL_B).expand(3, 2, 3, 3))
    assert layer.twist_x.requires_grad  # still a trainable Parameter
    with pytest.raises(ValueError, match="weight_x is not odd"):
        layer.set_twist_kernels(torch.ones(3, 3), SOBEL_B)
    center = torch.zeros(3, 3)
    center[1, 1] = 1.0
    with pytest.raises(ValueError, match="weight_y is not odd"):
        layer.set_twist_kernels(SOBEL_A, center)
    with pytest.raises(ValueError, match="does not broadcast"):
        layer.set_twist_kernels(torch.zeros(5, 5), SOBEL_B)
    with pytest.raises(TypeError, match="weight_x must be a torch.Tensor"):
        layer.set_twist_kernels([[0.0]], SOBEL_B)


def test_set_twist_kernels_rejects_non_finite() -> None:
    """NaN and infinite kernels raise (an odd pair of infinities made the oddness test NaN,
    which passed) and leave the parameters as they were."""
    layer = ConvTwist(2, 3)
    before = [layer.twist_x.detach().clone(), layer.twist_y.detach().clone()]
    for bad in (float("nan"), float("inf"), -float("inf")):
        kernel = SOBEL_A.clone()
        kernel[0, 0], kernel[2, 2] = bad, -bad
        with pytest.raises(ValueError, match="weight_x has NaN or infinite entries"):
            layer.set_twist_kernels(kernel, SOBEL_B)
        with pytest.raises(ValueError, match="weight_y has NaN or infinite entries"):
            layer.set_twist_kernels(SOBEL_A, kernel)
    assert torch.equal(layer.twist_x, before[0]) and torch.equal(layer.twist_y, before[1])
    # finite as given, infinite in the parameters' float16
    half = ConvTwist(2, 3, dtype=torch.float16)
    with pytest.raises(
        ValueError, match=r"weight_x has NaN or infinite entries \(in torch.float16"
    ):
        half.set_twist_kernels(1e6 * SOBEL_A, SOBEL_B)


# -- arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"kernel_size": 4},
            ValueError,
            r"kernel_size=4 is not allowed; it must be odd and square \(3, 5, 7",
        ),
        ({"kernel_size": (3, 5)}, ValueError, "must be odd and square"),
        ({"kernel_size": 0}, ValueError, "kernel_size=0 is not allowed; it must be an int >= 1"),
        (
            {"kernel_size": 1},
            ValueError,
            "kernel_size=1 is not allowed; .*has no twist terms.*nn.Conv2d",
        ),
        (
            {"kernel_size": (1, 1)},
            ValueError,
            r"kernel_size=\(1, 1\) is not allowed; .*has no twist terms",
        ),
        (
            {"kernel_size": 1.5},
            TypeError,
            "kernel_size=1.5 must be an int >= 1 or a tuple of 2 such ints, got float",
        ),
        (
            {"kernel_size": "3"},
            TypeError,
            "kernel_size='3' must be an int >= 1 or a tuple of 2 such ints, got str",
        ),
        ({"stride": 0}, ValueError, "stride=0 is not allowed; it must be an int >= 1"),
        ({"stride": -1}, ValueError, "stride=-1 is not allowed; it must be an int >= 1"),
        ({"stride": (1, 0)}, ValueError, r"stride=\(1, 0\) is not allowed; it must be an int >= 1"),
        ({"stride": (1, 2, 3)}, ValueError, "stride=.* tuple of 2"),
        (
            {"stride": 2.0},
            TypeError,
            "stride=2.0 must be an int >= 1 or a tuple of 2 such ints, got float",
        ),
        ({"groups": 3}, ValueError, "in_channels=4 is not divisible by groups=3"),
        ({"groups": 4, "out_channels": 6}, ValueError, "out_channels=6 is not divisible"),
        ({"groups": 0}, ValueError, "groups=0 is not allowed; it must be an int >= 1"),
        ({"groups": True}, TypeError, "groups=True must be an int >= 1, got bool"),
        ({"in_channels": 0}, ValueError, "in_channels=0 is not allowed; it must be an int >= 1"),
        ({"in_channels": -2}, ValueError, "in_channels=-2 is not allowed; it must be an int >= 1"),
        ({"in_channels": "3"}, TypeError, "in_channels='3' must be an int >= 1, got str"),
        ({"out_channels": 0}, ValueError, "out_channels=0 is not allowed; it must be an int >= 1"),
        ({"out_channels": 2.5}, TypeError, "out_channels=2.5 must be an int >= 1, got float"),
        ({"padding": -1}, ValueError, r"padding=-1 is not allowed; .*kernel_size // 2 = 1"),
        ({"padding": 0}, ValueError, "padding=0 is not allowed; .* pass padding=1"),
        ({"padding": (1, 2)}, ValueError, r"padding=\(1, 2\) is not allowed"),
        ({"padding": "valid"}, ValueError, "padding='valid' is not allowed; .*'same' .stride 1."),
        ({"padding": "same", "stride": 2}, ValueError, "padding='same' is not supported for stri"),
        (
            {"padding": 1.0},
            TypeError,
            "padding=1.0 must be an int >= 0 or a tuple of 2 such ints, got float",
        ),
        ({"kernel_size": 5, "padding": 1}, ValueError, "padding=1 .* kernel_size // 2 = 2"),
        (
            {"dilation": 2},
            ValueError,
            "dilation=2 is not allowed; it must be 1 .ConvTwist needs dilation 1.",
        ),
        (
            {"dilation": 1.0},
            TypeError,
            "dilation=1.0 must be an int >= 1 or a tuple of 2 such ints, got float",
        ),
        ({"bias": 1}, TypeError, "bias=1 must be a bool"),
        ({"init_max": -1.0}, ValueError, "init_max=-1.0"),
        ({"init_max": float("nan")}, ValueError, "init_max=nan"),
        ({"init_max": "1"}, TypeError, "init_max='1' must be a finite number >= 0, got str"),
        ({"padding_mode": "same"}, ValueError, "padding_mode='same' is not allowed"),
        ({"padding_mode": None}, TypeError, "padding_mode=None must be a str"),
        ({"impl": "triton"}, ValueError, "impl='triton' is not allowed"),
        ({"impl": 3}, TypeError, "impl=3 must be a str"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    args = {"in_channels": 4, "out_channels": 8} | kwargs
    with pytest.raises(exc, match=match):
        ConvTwist(**args)


def test_bad_input() -> None:
    layer = ConvTwist(4, 8)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 4, H, W\)"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="got \\(2, 4, 8\\)"):
        ConvTwist(8, 8)(torch.randn(2, 4, 8))
    with pytest.raises(TypeError, match="expects a torch.Tensor input, got ndarray"):
        layer(np.zeros((2, 4, 8, 8), dtype=np.float32))


# C++ names of dtypes, as nn.Conv2d's message gives them
C_NAMES = {
    torch.uint8: "unsigned char",
    torch.int64: "long int",
    torch.float16: "c10::Half",
    torch.float32: "float",
    torch.float64: "double",
}


@pytest.mark.parametrize("impl", ["auto", *IMPLS])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float64, torch.float16])
def test_input_dtype_must_match_parameters(impl: str, dtype: torch.dtype) -> None:
    """Every path refuses an input whose dtype is not the parameters' as nn.Conv2d does, with
    its message (from 32 input channels the tap path returned zeros for integer input, and
    every dtype ran through weights cast to it)."""
    layer = ConvTwist(32, 8, impl=impl)
    x = (10 * torch.rand(2, 32, 6, 5)).to(dtype)
    with pytest.raises(RuntimeError, match=f"Input type \\({re.escape(C_NAMES[dtype])}\\) and"):
        nn.Conv2d(32, 8, 3, padding=1)(x)
    message = f"Input type ({C_NAMES[dtype]}) and weight type (float) should be the same"
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        layer(x)
    with pytest.raises(
        RuntimeError, match=re.escape("Input type (float) and weight type (double)")
    ):
        ConvTwist(32, 8, impl=impl, dtype=torch.float64)(torch.randn(1, 32, 6, 5))


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_accepts_what_conv2d_accepts(impl: str) -> None:
    """Under autocast the input may differ from the parameters exactly where nn.Conv2d lets
    it (both among the dtypes autocast casts), and the output dtype is nn.Conv2d's."""
    for param_dtype in (torch.float32, torch.bfloat16, torch.float64):
        layer = ConvTwist(32, 8, impl=impl, dtype=param_dtype)
        conv = nn.Conv2d(32, 8, 3, padding=1, dtype=param_dtype)
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64):
            x = torch.randn(1, 32, 5, 6).to(dtype)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                try:
                    expected = conv(x).dtype
                except RuntimeError:
                    with pytest.raises(RuntimeError, match="^Input type .* should be the same$"):
                        layer(x)
                else:
                    assert layer(x).dtype == expected, (param_dtype, dtype)


# -- a drop-in for nn.Conv2d ----------------------------------------------------------------------
def test_signature_matches_conv2d() -> None:
    """nn.Conv2d's arguments in nn.Conv2d's order with its defaults (a bias included); only
    padding's default differs (k // 2, the one value ConvTwist can take)."""
    conv = inspect.signature(nn.Conv2d.__init__).parameters
    twist = inspect.signature(ConvTwist.__init__).parameters
    assert list(twist)[: len(conv)] == list(conv)
    for name, p in conv.items():
        if p.default is not inspect.Parameter.empty and name != "padding":
            assert twist[name].default == p.default, name
    assert ConvTwist(2, 2).bias is not None  # as nn.Conv2d(2, 2, 3)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((4, 6, 3, 1, 1), {}),
        ((4, 6, 3, 2, 1, 1, 2, False), {}),  # stride, padding, dilation, groups, bias
        ((4, 6, 5), {"padding": 2, "padding_mode": "reflect"}),
        ((4, 6, 3), {"padding": "same", "bias": False}),
        ((4, 6, (3, 3)), {"stride": (2, 1), "padding": (1, 1), "dilation": (1, 1)}),
    ],
)
def test_drop_in_for_conv2d(args: tuple, kwargs: dict) -> None:
    """An nn.Conv2d call with padding k // 2 builds a ConvTwist of the same configuration;
    with the convolution's weights and zero twist taps it computes the same function."""
    torch.manual_seed(14)
    conv = nn.Conv2d(*args, **kwargs)
    layer = ConvTwist(*args, **kwargs)
    assert (layer.kernel_size, layer.stride, layer.groups, layer.padding_mode) == (
        conv.kernel_size,
        conv.stride,
        conv.groups,
        conv.padding_mode,
    )
    assert layer.padding == (conv.kernel_size[0] // 2,) * 2
    assert (layer.bias is None) == (conv.bias is None)
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
        layer.twist_x.zero_()
        layer.twist_y.zero_()
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    x = torch.randn(2, 4, 9, 10)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("in_c", "groups", "k", "expected"),
    [
        (32, 1, 3, "taps"),
        (64, 2, 3, "taps"),
        (3, 1, 3, "stacked"),
        (8, 1, 5, "stacked"),
        (16, 1, 3, "split"),
        (16, 16, 3, "split"),  # depthwise
        (12, 4, 3, "split"),
    ],
)
def test_auto_impl_choice(in_c: int, groups: int, k: int, expected: str) -> None:
    """On CPU 'auto' picks the path the benchmark measured fastest, which computes the same
    function as the other paths."""
    layer = ConvTwist(in_c, 2 * groups, k, groups=groups, bias=True)
    x = torch.randn(2, in_c, 9, 8)
    assert layer._path(x) == expected
    out = layer(x)
    for impl in IMPLS:
        other = copy.deepcopy(layer)
        other.impl = impl
        assert other._path(x) == impl
        torch.testing.assert_close(other(x), out)


def test_extra_repr() -> None:
    r = repr(
        ConvTwist(
            4,
            8,
            5,
            stride=2,
            groups=2,
            bias=False,
            padding_mode="reflect",
            init_max=1.0,
            impl="taps",
        )
    )
    assert r == (
        "ConvTwist(4, 8, kernel_size=(5, 5), stride=(2, 2), groups=2, bias=False, "
        "padding_mode='reflect', init_max=1.0, impl='taps')"
    )
    assert repr(ConvTwist(2, 2)) == "ConvTwist(2, 2, kernel_size=(3, 3), stride=(1, 1))"


# -- conversion from nn.Conv2d -----------------------------------------------------------------
@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(4, 6, 3, padding=1),
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False),
        lambda: nn.Conv2d(6, 6, 5, padding="same", groups=6, padding_mode="reflect"),
        lambda: nn.Conv2d(3, 4, 7, stride=2, padding=3),
    ],
)
def test_from_conv_same_function(conv) -> None:
    torch.manual_seed(5)
    conv = conv()
    layer = ConvTwist.from_conv(conv)
    x = torch.randn(2, conv.in_channels, 11, 9)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    assert layer.stride == conv.stride and layer.groups == conv.groups
    assert (layer.bias is None) == (conv.bias is None)
    assert layer.padding_mode == conv.padding_mode
    assert layer.weight.data_ptr() != conv.weight.data_ptr()  # a copy, not shared


def test_from_conv_rejects() -> None:
    with pytest.raises(ValueError, match="padding=\\(0, 0\\) is not kernel_size // 2"):
        ConvTwist.from_conv(nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="dilation"):
        ConvTwist.from_conv(nn.Conv2d(2, 2, 3, padding=2, dilation=2))
    with pytest.raises(ValueError, match="not odd and square"):
        ConvTwist.from_conv(nn.Conv2d(2, 2, (3, 5), padding=(1, 2)))
    with pytest.raises(TypeError, match="plain nn.Conv2d, got Conv1d"):
        ConvTwist.from_conv(nn.Conv1d(2, 2, 3, padding=1))
    with pytest.raises(TypeError, match="plain nn.Conv2d, got ConvTranspose2d"):
        ConvTwist.from_conv(nn.ConvTranspose2d(2, 2, 3, padding=1))


# -- precision, compile, serialization ----------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(device: str, dtype: torch.dtype, impl: str) -> None:
    torch.manual_seed(6)
    layer = ConvTwist(8, 8, groups=2, bias=True, device=device, impl=impl)
    x = torch.randn(2, 8, 12, 10, device=device)
    with torch.autocast(device_type=device, dtype=dtype):
        out = layer(x)
    assert out.dtype == dtype
    ref = twist_reference(layer, x)
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < (2e-2 if dtype == torch.bfloat16 else 2e-3)
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


def test_float64_module_matches_float32() -> None:
    layer = ConvTwist(3, 4, bias=True)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(copy.deepcopy(layer).double()(x.double()).float(), layer(x))


@pytest.mark.slow
@pytest.mark.requires_inductor
@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile(impl: str) -> None:
    torch.manual_seed(7)
    layer = ConvTwist(4, 4, groups=2, stride=2, bias=True, impl=impl)
    compiled = torch.compile(copy.deepcopy(layer), fullgraph=True)
    x = torch.randn(2, 4, 8, 6)
    out, ref = compiled(x), layer(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    cparams = dict(compiled.named_parameters())
    for name, p in layer.named_parameters():
        torch.testing.assert_close(cparams[f"_orig_mod.{name}"].grad, p.grad, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(8)
    layer = ConvTwist(4, 6, kernel_size=5, groups=2, bias=True)
    x = torch.randn(1, 4, 7, 9)
    layer(x)  # populate the grid cache: it must not leak into state_dict
    sd = layer.state_dict()
    assert set(sd) == {"weight", "twist_x", "twist_y", "center_x", "center_y", "bias"}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    other = ConvTwist(4, 6, kernel_size=5, groups=2, bias=True)
    assert not torch.equal(other(x), layer(x))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other(x), layer(x))
    buf = io.BytesIO()
    torch.save(layer, buf)  # whole-module pickling, grid cache included
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), layer(x))


def test_grid_cache() -> None:
    layer = ConvTwist(2, 2)
    layer(torch.randn(1, 2, 5, 7))
    grids = dict(layer._grids)
    layer(torch.randn(3, 2, 5, 7))
    assert layer._grids.keys() == grids.keys() and len(grids) == 1
    (key,) = grids
    assert key[:2] == (5, 7)
    assert all(a is b for a, b in zip(layer._grids[key], grids[key], strict=True))
    layer.double()(torch.randn(1, 2, 5, 7, dtype=torch.float64))
    assert len(layer._grids) == 2  # keyed on dtype too
    for i in range(30):
        layer(torch.randn(1, 2, 3 + i, 3, dtype=torch.float64))
    assert len(layer._grids) <= 16  # bounded


@pytest.mark.parametrize("impl", IMPLS)
def test_inference_kernel_cache(impl: str) -> None:
    """Without gradients the kernels are built once; every in-place update invalidates."""
    torch.manual_seed(13)
    layer = ConvTwist(4, 4, bias=True, impl=impl)
    x = torch.randn(2, 4, 9, 8)

    def fresh() -> torch.Tensor:  # grad mode never uses the cache
        return layer(x).detach()

    with torch.no_grad():
        out = layer(x)
        kernels = layer._kernel_cache[impl][1]
        assert torch.equal(layer(x), out)
        assert all(a is b for a, b in zip(layer._kernel_cache[impl][1], kernels, strict=True))
    torch.testing.assert_close(out, fresh())
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), out)

    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), fresh())
        assert not torch.allclose(layer(x), out)
    layer.set_twist_kernels(SOBEL_A, SOBEL_B)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), fresh())
    layer.load_state_dict(ConvTwist(4, 4, bias=True).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), fresh())
    layer.requires_grad_(False)  # frozen parameters are cached in grad mode too
    layer(x)
    assert impl in layer._kernel_cache
    layer.center_x.data.add_(1.0)  # bypasses the version counter
    layer.clear_cache()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.double()(x.double()).float())


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_onnx_export(tmp_path, impl: str) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(9)
    layer = ConvTwist(4, 6, groups=2, stride=2, bias=True, impl=impl).eval()
    x = torch.randn(2, 4, 12, 10)
    path = tmp_path / "twist.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(layer, (x,), path, dynamo=True, dynamic_shapes={"input": {0: batch}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for n in (2, 5):
        xn = torch.randn(n, 4, 12, 10)
        (got,) = sess.run(None, {name: xn.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), layer(xn).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_is_compact() -> None:
    """An exported twist layer is one Conv and a short tail (the twist terms' kernels built
    from the parameters in a few ops), whatever impl says, and onnxruntime computes the
    same function. (The tap path exported ~35 nodes per layer, the stacked path ~20.)"""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(17)
    model = nn.Sequential(
        ConvTwist(3, 64, impl="stacked"),
        nn.ReLU(),
        ConvTwist(64, 64, stride=2, bias=False, impl="taps"),
        ConvTwist(64, 64, groups=4, impl="split"),
    ).eval()
    x = torch.randn(2, 3, 16, 12)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    ops = [node.op_type for node in program.model_proto.graph.node]
    assert ops.count("Conv") == 3
    assert len(ops) <= 3 * 10 + 1, ops  # ~8 per layer and the ReLU
    sess = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), rtol=1e-4, atol=1e-5)


def _graph_model(impl: str) -> nn.Sequential:
    torch.manual_seed(16)
    return nn.Sequential(
        ConvTwist(4, 8, groups=2, impl=impl),
        nn.ReLU(),
        ConvTwist(8, 40, stride=2, bias=False, padding_mode="reflect", impl=impl),
        ConvTwist(40, 40, impl=impl),
    )


def _grads(model: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out.square().sum(), [x, *model.parameters()])


@pytest.mark.parametrize("impl", ["auto", *IMPLS])
def test_fx_symbolic_trace(impl: str) -> None:
    """torch.fx traces a model of twist layers and a lone layer (it raised "symbolically
    traced variables cannot be used as inputs to control flow"); the GraphModule computes
    the same outputs and gradients and still checks its input."""
    model = _graph_model(impl)
    for root in (model, model[2]):
        graph_module = torch.fx.symbolic_trace(root)
        x = torch.randn(3, root.in_channels if root is model[2] else 4, 9, 8, requires_grad=True)
        out, ref = graph_module(x), root(x)
        assert torch.equal(out, ref)
        for g, r in zip(_grads(root, x, out), _grads(root, x, ref), strict=True):
            assert torch.equal(g, r)
    with pytest.raises(RuntimeError, match=re.escape("Input type (double) and weight type")):
        graph_module(x.double())
    with pytest.raises(ValueError, match="expects input of shape"):
        graph_module(torch.randn(2, 5, 9, 8))
    buf = io.BytesIO()  # a GraphModule pickles with the layer's call in its code
    torch.save(graph_module, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), out)


def test_feature_extraction() -> None:
    """torchvision's create_feature_extractor (how detection and segmentation code takes a
    backbone's features) works on a converted model, in eval and in training."""
    feature_extraction = pytest.importorskip(
        "torchvision.models.feature_extraction", exc_type=ImportError
    )
    create_feature_extractor = feature_extraction.create_feature_extractor
    from symconv import convert

    torch.manual_seed(18)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU()),
    )
    convert(model, "twist")
    extractor = create_feature_extractor(model, {"0.0": "stem", "1": "c3", "2": "c5"})
    x = torch.randn(2, 3, 32, 32)
    features = extractor(x)
    assert torch.equal(features["stem"], model[0][0](x))
    assert torch.equal(features["c3"], model[1](model[0](x)))
    assert torch.equal(features["c5"], model(x))
    features["c5"].sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_jit_script_says_what_to_use() -> None:
    """torch.jit.script raised internal compiler messages; now one clear error, for the layer
    and for a model that holds it."""
    for model in (ConvTwist(2, 2), nn.Sequential(nn.ReLU(), ConvTwist(2, 2))):
        with pytest.raises(
            TypeError,  # as every symconv layer that TorchScript cannot compile
            match="torch.jit.script does not support ConvTwist; use torch.compile, "
            "torch.jit.trace .*or torch.export",
        ):
            torch.jit.script(model)


@pytest.mark.parametrize("impl", ["auto", *IMPLS])
def test_jit_trace_save_load(tmp_path, impl: str) -> None:
    """A traced model survives torch.jit.save/load, computes the eager model's outputs and
    gradients at other batch sizes too, and holds one convolution per layer."""
    model = _graph_model(impl)
    x = torch.randn(2, 4, 9, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, (x,))
    assert str(traced.inlined_graph).count("aten::_convolution") == 3
    torch.jit.save(traced, str(tmp_path / "twist.pt"))
    loaded = torch.jit.load(str(tmp_path / "twist.pt"))
    for n in (2, 5):
        xn = torch.randn(n, 4, 9, 8, requires_grad=True)
        out, ref = loaded(xn), model(xn)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for g, r in zip(_grads(loaded, xn, out), _grads(model, xn, ref), strict=True):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["auto", *IMPLS])
def test_torch_export(impl: str) -> None:
    """torch.export.export with a dynamic batch: the program computes the eager model's
    outputs and holds one convolution per layer (the compact form)."""
    model = _graph_model(impl)
    x = torch.randn(2, 4, 9, 8)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes={"input": {0: batch}})
    convs = [n for n in program.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert len(convs) == 3
    for n in (1, 7):
        xn = torch.randn(n, 4, 9, 8)
        torch.testing.assert_close(program.module()(xn), model(xn), rtol=1e-5, atol=1e-5)


# -- the post's demonstration ---------------------------------------------------------------
def _blob_stats(img: torch.Tensor) -> tuple[float, float]:
    """Distance and angle (atan2(row, col) about the image center) of the intensity centroid."""
    h, w = img.shape
    rows = torch.arange(h, dtype=img.dtype).view(-1, 1) - (h - 1) / 2
    cols = torch.arange(w, dtype=img.dtype).view(1, -1) - (w - 1) / 2
    m = img.sum()
    r, c = float((img * rows).sum() / m), float((img * cols).sum() / m)
    return math.hypot(r, c), math.atan2(r, c)


def _flow(weight_x: torch.Tensor, weight_y: torch.Tensor, steps: int, size: int = 48):
    """Apply the post's near-identity twist ``steps`` times to an off-center Gaussian blob."""
    layer = ConvTwist(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, 1, 1] = 1.0  # W = identity
        # The image center, pixel (size - 1) / 2, in grid units 2 j / size.
        layer.center_x.fill_((size - 1) / size)
        layer.center_y.fill_((size - 1) / size)
    layer.set_twist_kernels(weight_x.double(), weight_y.double())
    idx = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    rows, cols = idx.view(-1, 1), idx.view(1, -1)
    img = torch.exp(-((rows + 5) ** 2 + (cols - 7) ** 2) / (2 * 3.0**2))[None, None]
    start = _blob_stats(img[0, 0])
    with torch.no_grad():
        for _ in range(steps):
            img = layer(img)
    return start, _blob_stats(img[0, 0])


# Sobel A ~ 8 d/dcol = 8 (2 / size) d/dX, Sobel B ~ -8 (2 / size) d/dY on the layer's grid.
EPS, STEPS, SIZE = 0.01, 150, 48
RATE = EPS * 16 / SIZE  # per-step rate of the generated flow, in radians (or log-scale)


def test_post_demo_rotation() -> None:
    """Wx = eps B ~ -d/dY and Wy = eps A ~ d/dX generate (Y - cy) d/dX - (X - cx) d/dY: a
    rotation about the center by +RATE per step in atan2(row, col)."""
    (r0, a0), (r1, a1) = _flow(EPS * SOBEL_B, EPS * SOBEL_A, STEPS, SIZE)
    assert abs(r1 - r0) < 0.02 * r0  # keeps its distance from the center
    assert a1 - a0 == pytest.approx(STEPS * RATE, rel=0.03)  # 0.5 rad, counter to the rows
    (_, b0), (_, b1) = _flow(-EPS * SOBEL_B, -EPS * SOBEL_A, STEPS, SIZE)
    assert b1 - b0 == pytest.approx(-STEPS * RATE, rel=0.03)  # the other direction


def test_post_demo_scaling() -> None:
    """Wx = eps A ~ d/dX and Wy = -eps B ~ d/dY generate (X - cx) d/dX + (Y - cy) d/dY: a
    contraction towards the center by (1 + RATE) per step, the angle unchanged."""
    (r0, a0), (r1, a1) = _flow(EPS * SOBEL_A, -EPS * SOBEL_B, STEPS, SIZE)
    assert abs(a1 - a0) < 0.01
    assert r1 / r0 == pytest.approx((1 + RATE) ** -STEPS, rel=0.03)
    (r0, a0), (r1, a1) = _flow(-EPS * SOBEL_A, EPS * SOBEL_B, STEPS, SIZE)
    assert abs(a1 - a0) < 0.01
    assert r1 / r0 == pytest.approx((1 - RATE) ** -STEPS, rel=0.03)  # expansion


# -- the spec (symconv.core.twist) ------------------------------------------------------------
def test_core_twist_imports_neither_torch_nor_keras() -> None:
    import subprocess
    import sys

    code = (
        "import sys, symconv.core.twist; "
        "print(sorted(m for m in ('torch', 'keras', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"groups": 2, "bias": False, "kernel_size": 5},
        {"groups": 4, "out_channels": 8, "stride": (2, 1), "padding_mode": "circular"},
    ],
)
def test_spec_matches_layer(kwargs: dict) -> None:
    """``spec.params()`` gives every parameter's real name, shape and presence, in
    ``named_parameters`` order; ``from_spec`` rebuilds the same layer."""
    from symconv.core.twist import TwistSpec

    args = {"in_channels": 4, "out_channels": 6} | kwargs
    layer = ConvTwist(**args, impl="split", init_max=0.5)
    spec = layer.spec
    assert isinstance(spec, TwistSpec) and spec.family == "twist"
    assert spec == TwistSpec.from_torch(**args, impl="split", init_max=0.5)
    params = [p for p in spec.params() if p.present]
    assert [p.torch_name for p in params] == [n for n, _ in layer.named_parameters()]
    assert all(tuple(getattr(layer, p.torch_name).shape) == p.torch_shape for p in params)
    assert [p.present for p in spec.params()] == [True] * 5 + [layer.bias is not None]
    twin = ConvTwist.from_spec(spec, dtype=torch.float64)
    assert twin.spec == spec and twin.weight.dtype == torch.float64
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups"):
        assert getattr(twin, name) == getattr(layer, name)
    assert twin.padding_mode == args.get("padding_mode", "zeros")
    assert (twin.init_max, twin.impl) == (0.5, "split")
    x = torch.randn(*spec.example_input_shape(), dtype=torch.float64)
    assert twin(x).shape[:2] == (x.shape[0], spec.out_channels)


def test_spec_example_and_layouts() -> None:
    from symconv.core.twist import TwistSpec

    spec = TwistSpec.example()
    layer = ConvTwist.from_spec(spec)
    assert layer(torch.randn(spec.example_input_shape())).shape[1] == spec.out_channels
    for p in spec.params():  # the Keras layout: np.transpose of the torch array
        arr = np.zeros(p.torch_shape)
        perm = p.to_keras or tuple(range(arr.ndim))
        assert np.transpose(arr, perm).shape == p.keras_shape
    labels = [f.label for f in spec.pair_fields()]
    assert labels == [
        "in_channels",
        "out_channels / filters",
        "kernel_size",
        "groups",
        "bias / use_bias",
        "stride / strides",
        "padding_mode",
    ]
    assert [f.weights for f in spec.pair_fields()] == [True] * 5 + [False] * 2
    with pytest.raises(ValueError, match="padding_mode='circular' has no ConvTwist2D"):
        TwistSpec.from_torch(4, 4, padding_mode="circular").keras_kwargs()
    with pytest.raises(TypeError, match="spec=3 must be a TwistSpec, got int"):
        ConvTwist.from_spec(3)
    keras_made = TwistSpec.from_keras(6, strides=2, use_bias=False, padding_mode="reflect")
    for needs_channels in (keras_made.params, keras_made.torch_kwargs_from_keras):
        with pytest.raises(ValueError, match="input channels are not known yet"):
            needs_channels()
    with pytest.raises(ValueError, match="the input has 5 channels, which is not divisible"):
        TwistSpec.from_keras(6, groups=2).with_in_channels(5)
    layer = ConvTwist.from_spec(keras_made.with_in_channels(3))
    assert (layer.in_channels, layer.out_channels, layer.stride) == (3, 6, (2, 2))
    assert layer.bias is None and layer.padding_mode == "reflect"


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(2, 2, 3, padding=1),
        nn.Conv2d(2, 2, 5, padding="same"),
        nn.Conv2d(2, 2, 3),
        nn.Conv2d(2, 2, 1),
        nn.Conv2d(2, 2, (3, 5), padding=(1, 2)),
        nn.Conv2d(2, 2, 4, padding=2),
        nn.Conv2d(2, 2, 3, padding=2, dilation=2),
        nn.Conv2d(2, 2, 3, padding="valid"),
    ],
    ids=lambda c: c.extra_repr(),
)
def test_conversion_reason_is_the_convert_rule(conv: nn.Conv2d) -> None:
    """``conversion_reason`` and ``convert`` agree, and ``from_conv`` converts exactly the
    convolutions it has no reason against (raising that reason otherwise)."""
    from symconv import convert
    from symconv.core.twist import conversion_reason

    reason = conversion_reason(conv.kernel_size, conv.dilation, conv.padding)
    report = convert(nn.Sequential(conv), "twist", copy_weights=False)
    assert [why for _, why in report.skipped] == ([] if reason is None else [reason])
    if reason is None:
        assert isinstance(ConvTwist.from_conv(conv), ConvTwist)
    else:
        with pytest.raises(ValueError, match=f"^ConvTwist.from_conv: {re.escape(reason)} "):
            ConvTwist.from_conv(conv)
