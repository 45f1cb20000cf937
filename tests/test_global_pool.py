"""GlobalConv1d and TopKPool: naive references, equivariance, masks, gradients, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from _gloo import ddp_and_single_process_states
from symconv import GlobalConv1d, TopKPool
from symconv.core.global_conv import GlobalConvSpec
from symconv.core.pooling import OrbitPoolSpec, TopKPoolSpec, plan_of
from symconv.core.spec import PairField
from symconv.core.symmetry import make_plan

DTYPES = [torch.float32, torch.float64]


def reference(layer: GlobalConv1d, x: torch.Tensor, mask: torch.Tensor | None = None):
    """Straight from the formula: an explicit double loop over positions i, j (float64)."""
    if x.dim() == 2:
        x = x.unsqueeze(1)
    n_batch, _, n = x.shape
    C = layer.center.detach().double()
    S = layer.surround.detach().double()
    b = None if layer.bias is None else layer.bias.detach().double()
    x = x.detach().double()
    valid = torch.ones(n_batch, n, dtype=torch.bool) if mask is None else mask.cpu()
    out = torch.zeros(n_batch, layer.out_channels, n, dtype=torch.float64)
    for s in range(n_batch):
        n_valid = int(valid[s].sum())
        for i in range(n):
            if not valid[s, i]:
                continue  # receives nothing: output stays 0
            surround = torch.zeros(layer.in_channels, dtype=torch.float64)
            for j in range(n):
                if j != i and valid[s, j]:
                    surround = surround + x[s, :, j].cpu()
            if layer.reduction == "mean" and n_valid > 1:
                surround = surround / (n_valid - 1)
            y = x[s, :, i].cpu() @ C.cpu() + surround @ S.cpu()
            if b is not None:
                y = y + b.cpu()
            if layer.activation is not None:
                y = layer.activation(y)
            out[s, :, i] = y
    return out


# -- GlobalConv1d ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_reference(device, dtype, batch, reduction, use_mask):
    torch.manual_seed(0)
    layer = GlobalConv1d(3, 4, reduction=reduction, device=device, dtype=dtype)
    x = torch.randn(batch, 3, 6, device=device, dtype=dtype)
    mask = torch.rand(batch, 6, device=device) > 0.4 if use_mask else None
    if use_mask and batch:
        mask[0] = False  # an all-padding row
        mask[0, 2] = True  # ... with one valid position: empty surround
    out = layer(x, mask)
    assert out.shape == (batch, 4, 6) and out.dtype == dtype and out.device.type == device
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.cpu().double(), reference(layer, x, mask), atol=tol, rtol=tol)


@given(
    n=st.integers(1, 7),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    bias=st.booleans(),
    reduction=st.sampled_from(["sum", "mean"]),
    act=st.sampled_from([None, "tanh", "relu"]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_random_configs(n, cin, cout, bias, reduction, act, seed):
    torch.manual_seed(seed)
    activation = {None: None, "tanh": torch.tanh, "relu": nn.ReLU()}[act]
    layer = GlobalConv1d(
        cin, cout, bias=bias, reduction=reduction, activation=activation, dtype=torch.float64
    )
    x = torch.randn(2, cin, n, dtype=torch.float64)
    mask = torch.rand(2, n) > 0.3
    for m in (None, mask):
        torch.testing.assert_close(layer(x, m), reference(layer, x, m))


def test_length_one_has_empty_surround():
    layer = GlobalConv1d(2, 3, reduction="mean", dtype=torch.float64)
    x = torch.randn(4, 2, 1, dtype=torch.float64)
    expected = (x[..., 0] @ layer.center + layer.bias).unsqueeze(-1)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(GlobalConv1d(2, 3, dtype=torch.float64)(x).shape, (4, 3, 1))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_permutation_equivariance(reduction):
    torch.manual_seed(1)
    layer = GlobalConv1d(3, 5, reduction=reduction, activation=torch.tanh, dtype=torch.float64)
    x = torch.randn(4, 3, 9, dtype=torch.float64)
    mask = torch.rand(4, 9) > 0.3
    for _ in range(5):
        perm = torch.randperm(9)
        torch.testing.assert_close(layer(x[..., perm]), layer(x)[..., perm])
        torch.testing.assert_close(layer(x[..., perm], mask[:, perm]), layer(x, mask)[..., perm])


def test_is_not_permutation_invariant():
    # The seed's docstring called the layer invariant; it is equivariant, not invariant.
    torch.manual_seed(2)
    layer = GlobalConv1d(2, 2, dtype=torch.float64)
    x = torch.randn(1, 2, 5, dtype=torch.float64)
    perm = torch.tensor([1, 0, 2, 3, 4])
    assert not torch.allclose(layer(x[..., perm]), layer(x))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_masked_positions_neither_contribute_nor_receive(reduction):
    torch.manual_seed(3)
    layer = GlobalConv1d(2, 3, reduction=reduction, activation=torch.sigmoid)
    x = torch.randn(2, 2, 7)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = layer(x, mask)
    # Receive nothing: exactly 0 even though sigmoid(0) != 0.
    assert torch.equal(out[~mask.unsqueeze(1).expand_as(out)], torch.zeros(int((~mask).sum()) * 3))
    # Contribute nothing: garbage (even inf/NaN) at padded positions changes nothing.
    garbage = x.clone()
    garbage[~mask.unsqueeze(1).expand_as(x)] = float("nan")
    garbage[0, :, 2] = float("inf")
    torch.testing.assert_close(layer(garbage, mask), out)
    # Same as running each set alone, without its padding.
    for s in range(2):
        alone = layer(x[s : s + 1, :, mask[s]])
        torch.testing.assert_close(out[s : s + 1, :, mask[s]], alone)


def test_two_dim_input_gets_a_channel_axis():
    layer = GlobalConv1d(1, 4, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer(x.unsqueeze(1)))
    assert layer(x).shape == (3, 4, 5)
    with pytest.raises(
        ValueError, match=r"2-D input \(N, n\) is read as one channel.*in_channels=2"
    ):
        GlobalConv1d(2, 4)(x)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradcheck(reduction):
    torch.manual_seed(4)
    layer = GlobalConv1d(2, 3, reduction=reduction, activation=torch.tanh, dtype=torch.float64)
    x = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)

    def fn(x, c, s, b):
        params = {"center": c, "surround": s, "bias": b}
        return torch.func.functional_call(layer, params, (x, mask))

    params = [
        p.detach().clone().requires_grad_() for p in (layer.center, layer.surround, layer.bias)
    ]
    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(lambda x: layer(x), (x,))


def test_autocast_cpu():
    layer = GlobalConv1d(3, 4)
    x = torch.randn(2, 3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), atol=0.1, rtol=0.05)


def test_parameters_and_repr():
    layer = GlobalConv1d(3, 5, bias=False, reduction="mean", activation=torch.relu)
    assert layer.center.shape == layer.surround.shape == (3, 5)
    assert layer.bias is None
    assert [n for n, _ in layer.named_parameters()] == ["center", "surround"]
    assert repr(layer) == "GlobalConv1d(3, 5, reduction='mean', bias=False, activation='relu')"
    act = nn.GELU()
    assert GlobalConv1d(3, 5, activation=act).activation is act
    assert "activation" in dict(GlobalConv1d(3, 5, activation=act).named_children())
    bound = 1 / np.sqrt(6)
    assert float(GlobalConv1d(3, 200).center.detach().abs().max()) <= bound


def test_state_dict_round_trip():
    a, b = GlobalConv1d(3, 4, reduction="mean"), GlobalConv1d(3, 4, reduction="mean")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            dict(in_channels=0, out_channels=2),
            ValueError,
            r"in_channels=0 is not allowed; it must be an int >= 1",
        ),
        (
            dict(in_channels=2, out_channels=-1),
            ValueError,
            r"out_channels=-1 is not allowed; it must be an int >= 1",
        ),
        # A wrong type is a TypeError, as for TopKPool(1.5) (issue 12's one exception policy).
        (dict(in_channels=2.0, out_channels=2), TypeError, r"in_channels=2.0 must be an int >= 1"),
        (dict(in_channels=1.5, out_channels=2), TypeError, r"in_channels=1.5 must be an int >= 1"),
        (dict(in_channels=True, out_channels=2), TypeError, r"in_channels=True"),
        (dict(in_channels=2, out_channels=2, bias=1), TypeError, r"bias=1 must be a bool"),
        (
            dict(in_channels=2, out_channels=2, reduction="max"),
            ValueError,
            r"reduction='max' is not allowed; it must be one of \('sum', 'mean'\)",
        ),
        (
            dict(in_channels=2, out_channels=2, activation="relu"),
            TypeError,
            r"activation='relu' must be None or a callable",
        ),
    ],
)
def test_invalid_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GlobalConv1d(**kwargs)


def test_invalid_inputs():
    layer = GlobalConv1d(3, 2)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, n\), got \(2, 4, 5\)"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, n\)"):
        layer(torch.randn(2, 3, 5, 1))
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\), expected \(N, n\) = \(2, 5\)"):
        layer(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask must be a bool tensor.*torch.float32"):
        layer(x, torch.ones(2, 5))


# -- TopKPool ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [0, 2])
def test_topk_matches_sorting(device, dtype, batch):
    x = torch.randn(batch, 3, 8, device=device, dtype=dtype)
    out = TopKPool(3)(x)
    assert out.shape == (batch, 3, 3) and out.dtype == dtype
    # Reference: sort each channel in Python, take the first k.
    for s in range(batch):
        for c in range(3):
            expected = sorted(x[s, c].tolist(), reverse=True)[:3]
            assert out[s, c].tolist() == expected


@given(n=st.integers(1, 9), k=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_topk_sorted_and_from_input(n, k, seed):
    k = min(k, n)
    x = torch.randn(2, 3, n, generator=torch.Generator().manual_seed(seed))
    out = TopKPool(k)(x)
    assert (out[..., :-1] >= out[..., 1:]).all()
    # Every kept value is >= every dropped value, and the values come from the input.
    if k < n:
        dropped = x.sort(dim=-1, descending=True).values[..., k:]
        assert (out[..., -1:] >= dropped.amax(-1, keepdim=True)).all()
    assert all(
        v in x[s, c].tolist() for s in range(2) for c in range(3) for v in out[s, c].tolist()
    )
    # Permutation-invariant over the pooled axis.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(TopKPool(k)(x[..., perm]), out)


def test_topk_k1_is_global_max_pool():
    x = torch.randn(4, 5, 11)
    torch.testing.assert_close(TopKPool(1)(x), nn.AdaptiveMaxPool1d(1)(x))
    torch.testing.assert_close(TopKPool(1)(x), x.amax(-1, keepdim=True))


def test_topk_gradients_flow_to_selected_entries():
    x = torch.tensor([[[0.5, 3.0, -1.0, 2.0, 1.0]]], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([[[10.0, 1.0]]], dtype=torch.float64)
    (TopKPool(2)(x) * weights).sum().backward()
    assert x.grad.tolist() == [[[0.0, 10.0, 0.0, 1.0, 0.0]]]
    y = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(TopKPool(4), (y,))


def test_topk_any_leading_dims():
    x = torch.randn(7)
    torch.testing.assert_close(TopKPool(2)(x), x.sort(descending=True).values[:2])


def test_topk_errors():
    with pytest.raises(ValueError, match=r"k=0 is not allowed; it must be an int >= 1"):
        TopKPool(0)
    with pytest.raises(TypeError, match=r"k=2.0 must be an int >= 1, got float"):
        TopKPool(2.0)
    with pytest.raises(TypeError, match=r"k=True must be an int >= 1"):
        TopKPool(True)
    with pytest.raises(ValueError, match=r"TopKPool\(k=5\) needs at least k values.*length is 4"):
        TopKPool(5)(torch.randn(2, 3, 4))
    assert repr(TopKPool(3)) == "TopKPool(k=3)"


def test_topk_mask():
    x = torch.tensor(
        [[[5.0, -1.0, 9.0, 2.0, -3.0]], [[1.0, 2.0, 3.0, 4.0, 5.0]]], dtype=torch.float64
    ).requires_grad_()
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    out = TopKPool(3)(x, mask)
    # Masked 9.0 is never selected; the second set has one valid position: 0-filled slots.
    assert out.tolist() == [[[5.0, 2.0, -1.0]], [[5.0, 0.0, 0.0]]]
    out.sum().backward()
    assert x.grad.tolist() == [[[1.0, 1.0, 0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0, 0.0, 1.0]]]
    # Same as pooling each set alone, without its padding.
    y = torch.randn(3, 2, 6)
    m = torch.rand(3, 6) > 0.3
    m[:, :3] = True
    for s in range(3):
        torch.testing.assert_close(TopKPool(3)(y, m)[s], TopKPool(3)(y[s : s + 1, :, m[s]])[0])
    with pytest.raises(ValueError, match=r"mask has shape \(3, 5\), expected \(N, L\) = \(3, 6\)"):
        TopKPool(2)(y, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask must be a bool tensor.*torch.int64"):
        TopKPool(2)(y, torch.ones(3, 6, dtype=torch.long))


# -- deployment: FX, jit.trace, TorchScript ------------------------------------------------
class _SetModel(nn.Module):
    """A set model: equivariant layers, then TopKPool (a mask is optional)."""

    def __init__(self, reduction: str) -> None:
        super().__init__()
        self.g1 = GlobalConv1d(1, 4, reduction=reduction, activation=torch.tanh)
        self.g2 = GlobalConv1d(4, 3, reduction=reduction, activation=nn.ReLU())
        self.pool = TopKPool(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.g2(self.g1(x, mask), mask), mask)


def _outputs_and_grads(model, x, mask):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    out = model(x) if mask is None else model(x, mask)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_fx_symbolic_trace_same_outputs_and_gradients(reduction, use_mask):
    torch.manual_seed(40)
    model = _SetModel(reduction).double()
    graph = torch.fx.symbolic_trace(model, concrete_args=None if use_mask else {"mask": None})
    for n in (2, 6):  # the surround count follows the input length
        x = torch.randn(3, n, dtype=torch.float64)  # (N, n): a 2-D input, one channel
        mask = torch.rand(3, n) > 0.3 if use_mask else None
        if mask is not None:
            mask[:, 0] = True
        got, want = _outputs_and_grads(graph, x, mask), _outputs_and_grads(model, x, mask)
        assert len(got) == len(want) == 2 + 6
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the input checks stay in the graph
    with pytest.raises(ValueError, match=r"TopKPool\(k=2\) needs at least k values"):
        torch.fx.symbolic_trace(TopKPool(2))(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 1, n\), got \(2, 3, 5\)"):
        graph(torch.randn(2, 3, 5, dtype=torch.float64))


def test_fx_global_conv_length_is_not_baked_in():
    torch.manual_seed(41)
    layer = GlobalConv1d(2, 3, reduction="mean").double()
    # traced on its own, an optional argument is a graph input unless given concretely
    graph = torch.fx.symbolic_trace(layer, concrete_args={"mask": None})
    for n in (1, 2, 7):
        x = torch.randn(2, 2, n, dtype=torch.float64)
        torch.testing.assert_close(graph(x), layer(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(graph(x), reference(layer, x), rtol=1e-12, atol=1e-12)


def test_jit_trace_saves_and_loads(tmp_path):
    torch.manual_seed(42)
    model = _SetModel("mean").eval()
    x = torch.randn(2, 5)
    path = tmp_path / "set.pt"
    torch.jit.save(torch.jit.trace(model, (x,)), str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("module", [GlobalConv1d(2, 3), TopKPool(2)], ids=["global", "topk"])
def test_jit_script_raises_a_clear_error(module):
    name = type(module).__name__
    with pytest.raises(TypeError, match=rf"torch.jit.script does not support {name}; use "):
        torch.jit.script(module)


# -- the specs (symconv.core) ------------------------------------------------------------
def test_core_spec_modules_import_neither_torch_nor_keras():
    code = (
        "import sys; import symconv.core.global_conv, symconv.core.pooling; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'keras', 'tensorflow')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("bias", [True, False])
def test_global_conv_spec_describes_the_layer(bias):
    layer = GlobalConv1d(3, 5, bias=bias, reduction="mean", dtype=torch.float64)
    spec = layer.spec
    assert spec == GlobalConvSpec(3, 5, bias, "mean")
    for layout in spec.params():
        param = getattr(layer, layout.torch_name)
        assert (param is not None) == layout.present
        if param is not None:
            assert tuple(param.shape) == layout.torch_shape == layout.keras_shape
    assert [f.label for f in spec.pair_fields() if f.weights] == [
        "in_channels",
        "out_channels / filters",
        "bias / use_bias",
    ]
    assert [f.label for f in spec.pair_fields() if not f.weights] == ["reduction"]
    twin = GlobalConv1d.from_spec(spec, activation=torch.tanh, dtype=torch.float64)
    assert twin.spec == spec and twin.activation is torch.tanh
    assert twin(torch.randn(2, *spec.example_input_shape()[1:], dtype=torch.float64)).shape[1] == 5
    example = GlobalConvSpec.example()
    assert GlobalConv1d.from_spec(example)(torch.randn(example.example_input_shape())).shape == (
        2,
        example.out_channels,
        6,
    )
    with pytest.raises(TypeError, match=r"spec=TopKPoolSpec\(k=2\) must be a GlobalConvSpec"):
        GlobalConv1d.from_spec(TopKPoolSpec(2))


def test_global_conv_spec_from_keras_arguments():
    spec = GlobalConvSpec.from_keras(4, reduction="mean", use_bias=False)
    assert spec.in_channels is None and spec.keras_kwargs("channels_first") == {
        "filters": 4,
        "reduction": "mean",
        "use_bias": False,
    }
    with pytest.raises(ValueError, match=r"input channels are not known"):
        spec.torch_kwargs_from_keras()
    built = spec.with_in_channels(3)
    assert built.keras_input_shape("channels_first") == (None, None, 3)  # sets: always (b, n, c)
    assert built.torch_kwargs_from_keras() == dict(
        in_channels=3, out_channels=4, bias=False, reduction="mean"
    )
    with pytest.raises(ValueError, match=r"filters=0 is not allowed; it must be an int >= 1"):
        GlobalConvSpec.from_keras(0)
    with pytest.raises(TypeError, match=r"use_bias='yes' must be a bool, got str"):
        GlobalConvSpec.from_keras(2, use_bias="yes")


def test_topk_spec_describes_the_layer():
    layer = TopKPool(2)
    assert layer.spec == TopKPoolSpec(2) and layer.spec.params() == ()
    assert layer.spec.pair_fields() == (PairField("k", 2, weights=True),)
    assert TopKPool.from_spec(TopKPoolSpec.from_keras(3)).k == 3
    assert TopKPoolSpec(3).keras_input_shape() == (None, None, None)
    x = torch.randn(TopKPoolSpec(3).example_input_shape())
    assert TopKPool.from_spec(TopKPoolSpec.example())(x).shape == (2, 3, 3)
    with pytest.raises(TypeError, match=r"k=1.5 must be an int >= 1, got float"):
        TopKPoolSpec.from_torch(1.5)


def test_orbit_pool_spec():
    plan = make_plan({"h": 2, "hv": 4}, 10, 2)
    spec = OrbitPoolSpec.from_torch(plan, "mean")
    assert (spec.in_channels, spec.out_channels, spec.spatial_rank) == (10, plan.n_free, 2)
    assert spec.params() == () and spec.torch_kwargs() == {"layer_or_plan": plan, "mode": "mean"}

    class HasPlan:
        pass

    layer = HasPlan()
    layer.plan = plan
    assert OrbitPoolSpec.from_torch(layer).plan is plan and plan_of(layer, "x") is plan
    assert spec.with_in_channels(10) is spec
    with pytest.raises(ValueError, match=r"in_channels=9 is not allowed.*out_channels=10"):
        spec.with_in_channels(9)
    with pytest.raises(ValueError, match=r"mode='min' is not allowed; it must be one of"):
        OrbitPoolSpec.from_torch(plan, "min")
    with pytest.raises(TypeError, match=r"layer_or_plan=3 must be a SymmetryPlan or a layer"):
        OrbitPoolSpec.from_torch(3)
    example = OrbitPoolSpec.example(1)
    assert example.example_input_shape() == (2, 6, 5) and example.out_channels == 4


# -- DistributedDataParallel ---------------------------------------------------------------
def _ddp_set_model() -> nn.Module:
    torch.manual_seed(50)
    return _SetModel("mean").double()


@pytest.mark.requires_gloo
@pytest.mark.timeout(300)
def test_ddp_steps_equal_single_process_steps(tmp_path):
    """Two SGD steps under DDP (two gloo workers, half the sets each, with masks) leave
    every parameter where the same steps on the whole batch in one process do: the layers
    keep each set independent of the others in the batch, and DDP averages their
    gradients."""
    g = torch.Generator().manual_seed(51)
    x = torch.randn(4, 1, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=g) > 0.3
    mask[:, :2] = True  # at least k = 2 valid positions per set
    target = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    start, ddp, single = ddp_and_single_process_states(_ddp_set_model, (x, mask), target, tmp_path)
    assert ddp.keys() == single.keys() == start.keys()
    for name, value in single.items():
        assert (value - start[name]).abs().max() > 1e-3, name  # the steps moved it
        torch.testing.assert_close(ddp[name], value, rtol=0, atol=1e-12)
