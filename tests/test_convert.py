"""convert(): in-place model surgery to ConvTwist and SymmetricConvNd, and its report."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from _models import BasicBlock
from symconv import ConvTwist, SymmetricConv1d, SymmetricConv2d
from symconv.conversion import ConversionReport, convert, name_matches
from symconv.nn.symmetric import SymmetricConv3d


class SmallResNet(nn.Module):
    """ResNet-style: a 7x7 stem, two BasicBlocks (the second downsamples with a 1x1)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean((2, 3)))


TWISTED = ["conv1", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2"]


def _model() -> SmallResNet:
    torch.manual_seed(0)
    model = SmallResNet()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode is a real check
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("train", [False, True])
def test_twist_same_function_at_step_zero(train: bool) -> None:
    model = _model().train(train)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    report = convert(model, "twist")
    assert isinstance(report, ConversionReport) and report.to == "twist"
    assert [n for n, _, _ in report.converted] == TWISTED
    assert dict(report.skipped) == {
        "layer2.downsample.0": "1x1 kernel: the odd twist kernels would be identically zero"
    }
    for name in TWISTED:
        layer = model.get_submodule(name)
        old = ref.get_submodule(name)
        assert isinstance(layer, ConvTwist)
        assert (layer.in_channels, layer.out_channels) == (old.in_channels, old.out_channels)
        assert layer.kernel_size == old.kernel_size and layer.stride == old.stride
        assert layer.training == train
        assert torch.equal(layer.weight, old.weight)
        assert not layer.twist_x.any() and not layer.twist_y.any()
    assert isinstance(model.layer2.downsample[0], nn.Conv2d)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    added = sum(
        2 * m.weight[:, :, 0, 0].numel() * (m.kernel_size[0] ** 2 - 1) // 2 + 2 * m.out_channels
        for m in (ref.get_submodule(n) for n in TWISTED)
    )
    assert report.params_before == _n_params(ref)
    assert report.params_after == _n_params(model) == _n_params(ref) + added
    assert len(report) == 5 and bool(report)


def test_twist_trains_after_conversion() -> None:
    model = _model()
    convert(model, "twist")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert model.layer1.conv1.twist_x.abs().sum() > 0  # the twist terms receive gradient
    wx = model.layer1.conv1.weight_x
    assert torch.equal(wx, -wx.flip(2, 3))


def test_twist_copy_weights_false() -> None:
    model = _model()
    old_weight = model.layer1.conv1.weight.detach().clone()
    report = convert(model, "twist", copy_weights=False, init_max=0.25)
    assert len(report) == 5
    layer = model.layer1.conv1
    assert isinstance(layer, ConvTwist) and layer.init_max == 0.25
    assert not torch.equal(layer.weight, old_weight)
    assert layer.twist_x.abs().sum() > 0
    assert layer.center_x.abs().max() <= 0.25


def test_twist_keeps_dtype_bias_groups_and_frozen() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2, padding_mode="circular"),
        nn.Conv2d(8, 8, 5, padding="same", groups=8, bias=False),
    ).double()
    model[1].requires_grad_(False)
    ref = copy.deepcopy(model)
    convert(model, "twist")
    assert all(isinstance(m, ConvTwist) for m in model)
    assert model[0].groups == 2 and model[0].bias is not None
    assert model[0].padding_mode == "circular"
    assert model[0].weight.dtype == torch.float64
    assert not any(p.requires_grad for p in model[1].parameters())
    x = torch.randn(1, 4, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(model(x), ref(x))


def test_twist_predicate() -> None:
    model = _model()
    report = convert(model, "twist", predicate=name_matches("layer2.conv*"))
    assert [n for n, _, _ in report.converted] == ["layer2.conv1", "layer2.conv2"]
    # a predicate that picks a 1x1 conv gets it skipped: a 1x1 kernel has no twist terms
    model = _model()
    ref = copy.deepcopy(model)
    report = convert(model, "twist", predicate=lambda name, m: m.kernel_size == (1, 1))
    assert not report.converted
    assert "kernel_size=1" in dict(report.skipped)["layer2.downsample.0"]
    assert ("conv1", "not selected by predicate") in report.skipped
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(model.eval()(x), ref.eval()(x))
    # and so is anything else ConvTwist cannot represent, with the reason
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=2, dilation=2), nn.Conv2d(2, 2, 4))
    report = convert(model, "twist", predicate=lambda name, m: True)
    assert not report
    assert "dilation" in dict(report.skipped)["0"]
    assert "not odd and square" in dict(report.skipped)["1"]
    assert all(type(m) is nn.Conv2d for m in model)


def test_twist_default_rule_skips() -> None:
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(
        nn.Conv2d(2, 2, 3),  # no padding
        nn.Conv2d(2, 2, 3, padding=2, dilation=2),
        nn.Conv2d(2, 2, (3, 1), padding=(1, 0)),
        nn.ConvTranspose2d(2, 2, 3, padding=1),
        nn.Conv1d(2, 2, 3, padding=1),
        MyConv(2, 2, 3, padding=1),
        SymmetricConv2d(2, 2, 3, padding=1, symmetry={"h": 2}),
        ConvTwist(2, 2),
    )
    report = convert(model, "twist")
    assert not report and len(report) == 0
    reasons = dict(report.skipped)
    assert reasons["0"] == "padding=(0, 0) is not kernel_size // 2 = 1"
    assert reasons["1"].startswith("dilation=(2, 2)")
    assert reasons["2"] == "kernel_size=(3, 1) is not odd and square"
    assert reasons["3"] == "transposed convolution (ConvTranspose2d)"
    assert reasons["4"] == "Conv1d: ConvTwist is 2-D only"
    assert reasons["5"].startswith("MyConv subclasses nn.Conv2d")
    assert reasons["6"] == "already a SymmetricConv2d"
    assert reasons["7"] == "already a ConvTwist"
    assert type(model[5]) is MyConv and type(model[0]) is nn.Conv2d


def test_converting_twice_does_nothing() -> None:
    model = _model()
    convert(model, "twist")
    state = copy.deepcopy(model.state_dict())
    again = convert(model, "twist")
    assert not again
    assert sum("already a ConvTwist" in why for _, why in again.skipped) == 5
    assert again.params_before == again.params_after
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_shared_module_replaced_everywhere() -> None:
    shared = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Module()
    model.a = shared
    model.blocks = nn.ModuleList([nn.ReLU(), shared])
    report = convert(model, "twist")
    assert len(report) == 1
    assert isinstance(model.a, ConvTwist) and model.blocks[1] is model.a


def test_root_conv_is_skipped() -> None:
    conv = nn.Conv2d(2, 2, 3, padding=1)
    report = convert(conv, "twist")
    assert not report and "cannot be replaced in place" in dict(report.skipped)[""]


def test_report_str() -> None:
    report = convert(_model(), "twist")
    text = str(report)
    assert text.splitlines()[0].startswith("convert(to='twist'): 5 converted, 1 skipped")
    assert "layer2.conv1" in text and "ConvTwist(8, 16, kernel_size=(3, 3), stride=(2, 2)" in text
    assert "Conv2d(8, 16, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)" in text
    assert "layer2.downsample.0  1x1 kernel" in text


# -- to='symmetric' ---------------------------------------------------------------------------
def test_symmetric_percentages_per_layer() -> None:
    """(include_degenerate=True: the 1x1 downsample converts too, as before issue 11.)"""
    model = _model()
    report = convert(model, "symmetric", symmetry={"hv": "50%"}, include_degenerate=True)
    names = [n for n, _, _ in report.converted]
    assert names == TWISTED[:3] + ["layer2.conv1", "layer2.conv2", "layer2.downsample.0"]
    assert not report.skipped
    assert model.conv1.plan.n_symmetric == 4  # 50% of 8 channels = one quadruple
    assert model.layer2.conv1.plan.n_symmetric == 8  # 50% of 16 = two quadruples
    assert model.layer2.downsample[0].plan.n_symmetric == 8
    assert all(isinstance(model.get_submodule(n), SymmetricConv2d) for n in names)
    assert report.params_after < report.params_before
    # each quadruple shares one filter: 3 of every 4 filters disappear
    saved = sum(
        m.plan.n_symmetric * 3 // 4 * m.weight[0].numel()
        for m in (model.get_submodule(n) for n in names)
    )
    assert report.params_before - report.params_after == saved


def test_symmetric_skips_what_does_not_fit() -> None:
    model = _model()
    report = convert(model, "symmetric", symmetry={"hv": 12})
    skipped = dict(report.skipped)
    # 12 channels do not fit in 8: the stem and layer1 stay plain, layer2 (16) converts
    # (and its 1x1 downsample is skipped as degenerate)
    assert set(skipped) == {"conv1", "layer1.conv1", "layer1.conv2", "layer2.downsample.0"}
    assert "12" in skipped["conv1"] and "8" in skipped["conv1"]
    assert type(model.conv1) is nn.Conv2d and isinstance(model.layer2.conv1, SymmetricConv2d)
    # an orbit straddling two groups
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=2))
    report = convert(model, "symmetric", symmetry={"hv": 4})
    assert not report and "group" in report.skipped[0][1]


def test_symmetric_skips_layers_the_spec_leaves_plain() -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1))
    report = convert(model, "symmetric", symmetry={"hv": "50%"})
    assert [n for n, _, _ in report.converted] == ["1"]
    assert report.skipped == [
        (
            "0",
            "symmetry={'hv': '50%'} gives no symmetric channels for out_channels=6 "
            "(percentages round down to whole orbits)",
        )
    ]
    assert type(model[0]) is nn.Conv2d


def test_symmetric_all_dimensions() -> None:
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.Conv2d(2, 4, 3, padding=1),
        nn.Conv3d(2, 4, 3, padding=1),
        nn.ConvTranspose2d(2, 2, 3),
    )
    report = convert(model, "symmetric", symmetry={"h": 2})
    assert [type(m) for m in model[:3]] == [SymmetricConv1d, SymmetricConv2d, SymmetricConv3d]
    assert report.skipped == [("3", "transposed convolution (ConvTranspose2d)")]
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Conv2d(2, 4, 3))
    report = convert(model, "symmetric", symmetry={"hv": 4})
    assert [n for n, _, _ in report.converted] == ["1"]
    assert "'hv'" in dict(report.skipped)["0"]  # a 1-D layer has no 'v' axis


def test_symmetric_copy_weights_round_trip() -> None:
    """A conv whose filters already have the symmetry converts to the same function."""
    torch.manual_seed(1)
    sym = SymmetricConv2d(3, 8, 3, padding=1, symmetry={"hv": 4, "h": 2}, share_bias=True)
    model = nn.Sequential(sym.to_conv())
    ref = copy.deepcopy(model)
    convert(model, "symmetric", symmetry={"hv": 4, "h": 2})
    x = torch.randn(2, 3, 7, 6)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert model[0].plan.n_free == sym.plan.n_free
    fresh = nn.Sequential(sym.to_conv())
    convert(fresh, "symmetric", symmetry={"hv": 4, "h": 2}, copy_weights=False)
    assert not torch.allclose(fresh(x), ref(x))


def test_symmetric_skips_converted_layers() -> None:
    model = nn.Sequential(SymmetricConv2d(2, 4, 3, symmetry={"h": 2}), ConvTwist(2, 2))
    report = convert(model, "symmetric", symmetry={"h": 2})
    assert not report
    assert report.skipped == [("0", "already a SymmetricConv2d"), ("1", "already a ConvTwist")]


# -- arguments ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (("resnet", "twist"), {}, TypeError, "model must be a torch.nn.Module, got str"),
        ((None, "rotate"), {}, ValueError, "to='rotate' is not allowed"),
        ((None, "symmetric"), {}, ValueError, "to='symmetric' needs a symmetry spec"),
        ((None, "twist"), {"symmetry": {"h": 2}}, ValueError, "only used with to='symmetric'"),
        ((None, "twist"), {"share_bias": 1}, TypeError, "share_bias=1 must be a bool"),
        ((None, "twist"), {"copy_weights": "yes"}, TypeError, "copy_weights='yes'"),
        ((None, "twist"), {"predicate": "layer1"}, TypeError, "predicate='layer1' must be"),
        ((None, "twist"), {"init_max": -1}, ValueError, "init_max=-1 is not allowed; it must be"),
        (
            (None, "twist"),
            {"init_max": float("nan")},
            ValueError,
            "init_max=nan is not allowed; it must be",
        ),
        (
            (None, "twist"),
            {"include_degenerate": True},
            ValueError,
            "include_degenerate=True is only used with to='symmetric'",
        ),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, exc: type, match: str) -> None:
    model = _model()
    args = tuple(model if a is None else a for a in args)
    with pytest.raises(exc, match=match):
        convert(*args, **kwargs)


@pytest.mark.parametrize(
    ("symmetry", "exc", "match"),
    [
        ({"q": 2}, ValueError, "unknown symmetry key 'q'"),
        ({"hv": 6}, ValueError, "not a multiple of the orbit size 4"),
        ({"h": "half"}, ValueError, "is not a percentage"),
        ("hv=50%", ValueError, "malformed"),
        ({}, ValueError, "selects no channels"),
        (["hv"], TypeError, "must be a dict"),
    ],
)
def test_bad_symmetry_spec_fails_up_front(symmetry: object, exc: type, match: str) -> None:
    model = _model()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(exc, match=match):
        convert(model, "symmetric", symmetry=symmetry)
    assert type(model.conv1) is nn.Conv2d and model.state_dict().keys() == state.keys()


def test_symmetric_string_spec() -> None:
    model = _model()
    report = convert(model, "symmetric", symmetry="hv:50%")
    assert len(report) == 5 and model.conv1.plan.n_symmetric == 4  # the 1x1 is skipped


def test_name_matches_rejects_no_patterns() -> None:
    with pytest.raises(ValueError, match="one or more string patterns"):
        name_matches()
    with pytest.raises(ValueError, match="one or more string patterns"):
        name_matches("layer1", 3)


def test_torchvision_resnet18() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=10).eval()
    ref = copy.deepcopy(model)
    report = convert(model, "twist")
    # every 3x3 conv of the 8 BasicBlocks plus the 7x7 stem; the 3 downsample 1x1s stay
    assert len(report) == 17 and len(report.skipped) == 3
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
    model = copy.deepcopy(ref)
    report = convert(model, "symmetric", symmetry={"hv": "25%"})
    # the 3 downsample 1x1s are degenerate (every reflection of a 1x1 kernel is itself)
    assert len(report) == 17 and [n for n, _ in report.skipped] == [
        f"layer{i}.0.downsample.0" for i in (2, 3, 4)
    ]


def test_top_level_export_is_the_function() -> None:
    """``symconv.convert`` is the function (the module is ``symconv.conversion``), and
    ``import symconv`` alone imports no torch (so ``symconv --help`` is instant)."""
    code = (
        "import sys, symconv\n"
        "assert 'torch' not in sys.modules\n"
        "import symconv.conversion\n"
        "from symconv import ConversionReport, name_matches\n"
        "assert callable(symconv.convert) and symconv.convert.__name__ == 'convert'\n"
        "from symconv import convert\n"
        "assert convert is symconv.conversion.convert\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


# -- degenerate keys: reflections that leave the kernel unchanged ------------------------------
def _distinct_channels(y: torch.Tensor) -> int:
    """How many output channels of ``(N, C, ...)`` differ from every other one."""
    flat = y.transpose(0, 1).reshape(y.shape[1], -1)
    return len({tuple(row.tolist()) for row in flat})


def test_symmetric_skips_1x1_convolutions_by_default() -> None:
    model = _model()
    report = convert(model, "symmetric", symmetry={"hv": "50%"})
    assert [n for n, _, _ in report.converted] == TWISTED
    assert report.skipped == [
        (
            "layer2.downsample.0",
            "1x1 kernel: every reflection leaves it unchanged, so each orbit would be identical "
            "copies (include_degenerate=True converts it anyway)",
        )
    ]
    assert type(model.layer2.downsample[0]) is nn.Conv2d
    assert "layer2.downsample.0  1x1 kernel" in str(report)
    # forced, the 1x1 layer's 16 channels are 8 distinct ones, each twice (or four times)
    forced = _model()
    convert(forced, "symmetric", symmetry={"hv": "50%"}, include_degenerate=True)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    assert _distinct_channels(forced.layer2.downsample[0].double()(x)) == 16 - 8 + 2
    assert _distinct_channels(model.layer2.downsample[0].double()(x)) == 16


def test_symmetric_1x1_classifier_keeps_distinct_scores() -> None:
    """A 1x1-conv classifier (as squeezenet's) turned symmetric would tie its class scores."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 1), nn.AdaptiveAvgPool2d(1)
    )
    x = torch.randn(4, 3, 8, 8)
    head = model[2]
    report = convert(model, "symmetric", symmetry={"h": "100%"})
    assert [n for n, _, _ in report.converted] == ["0"] and report.skipped[0][0] == "2"
    assert model[2] is head
    assert _distinct_channels(model(x)) == 12
    forced = copy.deepcopy(model)
    convert(forced, "symmetric", symmetry={"h": "100%"}, include_degenerate=True)
    assert _distinct_channels(forced(x)) == 6


@pytest.mark.parametrize(
    ("kernel_size", "padding", "kept", "dropped", "axes"),
    [
        ((1, 3), (0, 1), "h", "hv", "v axis"),
        ((3, 1), (1, 0), "v", "hv", "h axis"),
    ],
)
def test_symmetric_degenerate_keys_per_axis(kernel_size, padding, kept, dropped, axes) -> None:
    """A key is left out where one of its flipped axes has kernel extent 1; others apply."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 8, kernel_size, padding=padding))
    report = convert(model, "symmetric", symmetry={kept: 2, dropped: 4})
    layer = model[0]
    assert isinstance(layer, SymmetricConv2d)
    assert [b.key for b in layer.plan.blocks] == [kept] and layer.plan.n_plain == 6
    assert report.notes == [
        (
            "0",
            f"key {dropped!r} not applied: kernel_size={kernel_size} has extent 1 along the "
            f"{axes}, whose reflection leaves the kernel unchanged, so its orbits would hold "
            "identical copies (include_degenerate=True applies it)",
        )
    ]
    assert "note on" in str(report) and f"key {dropped!r} not applied" in str(report)
    assert _distinct_channels(model(torch.randn(1, 2, 6, 6, dtype=torch.float32))) == 8
    # only the degenerate key: the layer is skipped with the note as the reason
    model = nn.Sequential(nn.Conv2d(2, 8, kernel_size, padding=padding))
    report = convert(model, "symmetric", symmetry={dropped: 4})
    assert not report and f"key {dropped!r} not applied" in report.skipped[0][1]
    assert type(model[0]) is nn.Conv2d
    # forced: the key applies and its orbits hold duplicates
    report = convert(model, "symmetric", symmetry={dropped: 8}, include_degenerate=True)
    assert report and not report.notes
    assert _distinct_channels(model(torch.randn(1, 2, 6, 6))) == 4


def test_symmetric_degenerate_1d_and_3d() -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 1), nn.Conv1d(2, 4, 3))
    report = convert(model, "symmetric", symmetry={"h": 2})
    assert report.skipped == [
        (
            "0",
            "length-1 kernel: every reflection leaves it unchanged, so each orbit would be "
            "identical copies (include_degenerate=True converts it anyway)",
        )
    ]
    assert [n for n, _, _ in report.converted] == ["1"]
    model = nn.Sequential(nn.Conv3d(2, 4, (3, 1, 3), padding=1), nn.Conv3d(2, 4, 1))
    report = convert(model, "symmetric", symmetry={"h": 2, "v": 2})
    assert report.skipped[0][0] == "1" and report.skipped[0][1].startswith("1x1x1 kernel")
    assert [b.key for b in model[0].plan.blocks] == ["h"]  # v flips the extent-1 height
    assert report.notes[0][0] == "0" and "key 'v' not applied" in report.notes[0][1]


# -- subclasses and conv-like modules: never silently change what a module computes -----------
class StdConv2d(nn.Conv2d):
    """Stand-in for timm's StdConv2d: weight standardization in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class Conv2dSame(nn.Conv2d):
    """Stand-in for timm's Conv2dSame: TensorFlow-style dynamic 'same' padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        x = nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0)


class CondConv2d(nn.Module):
    """Stand-in for timm's CondConv2d: conv-like attributes, expert weights, not a ConvNd."""

    def __init__(self, cin: int, cout: int, k: int, experts: int = 2) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, (k, k)
        self.stride, self.padding, self.dilation, self.groups = (1, 1), (k // 2,) * 2, (1, 1), 1
        self.weight = nn.Parameter(torch.randn(experts, cout * cin * k * k) * 0.1)
        self.routing = nn.Linear(cin, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(self.routing(x.mean((2, 3))))  # (N, experts)
        w = (r @ self.weight).view(-1, self.in_channels, *self.kernel_size)
        out = nn.functional.conv2d(
            x.reshape(1, -1, *x.shape[2:]), w, None, 1, self.padding, groups=x.shape[0]
        )
        return out.view(x.shape[0], self.out_channels, *out.shape[2:])


class PlainSubclass(nn.Conv2d):
    """A subclass that keeps nn.Conv2d's computation (e.g. only adds an attribute)."""


def _timm_like() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(
        StdConv2d(3, 8, 3, padding=1),
        Conv2dSame(8, 8, 3, stride=2),
        CondConv2d(8, 8, 3),
        PlainSubclass(8, 8, 3, padding=1),
    )


@pytest.mark.parametrize("to", ["twist", "symmetric"])
@pytest.mark.parametrize("predicate", [None, lambda name, m: True])
def test_subclasses_with_own_forward_are_refused(to: str, predicate) -> None:
    model = _timm_like()
    ref = copy.deepcopy(model)
    kwargs = {"symmetry": {"h": 2}} if to == "symmetric" else {}
    report = convert(model, to, predicate=predicate, **kwargs)
    skipped = dict(report.skipped)
    for name, cls in (("0", "StdConv2d"), ("1", "Conv2dSame")):
        assert skipped[name] == (
            f"{cls} subclasses nn.Conv2d with its own forward, which the replacement would "
            "drop; pass allow_subclasses=True to convert it anyway"
        )
    assert skipped["2"] == (
        "not convertible: CondConv2d looks like a convolution (in_channels, out_channels, "
        "kernel_size) but is not an nn.Conv1d/2d/3d"
    )
    assert "routing" not in skipped  # a Linear is not conv-like
    if predicate is None:
        assert skipped["3"].startswith("PlainSubclass subclasses nn.Conv2d; select it")
    else:  # a predicate opts in subclasses that keep nn.Conv2d's computation
        assert [n for n, _, _ in report.converted] == ["3"]
    assert [type(m) for m in model[:3]] == [type(m) for m in ref[:3]]
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(model[:3](x), ref[:3](x), rtol=0, atol=0)


def test_allow_subclasses_converts_them_knowingly() -> None:
    model = _timm_like()
    ref = copy.deepcopy(model)
    report = convert(model, "twist", allow_subclasses=True)
    assert [n for n, _, _ in report.converted] == ["0", "3"]  # "1" is unpadded: not twist-able
    assert "padding=(0, 0)" in dict(report.skipped)["1"]
    assert dict(report.skipped)["2"].startswith("not convertible: CondConv2d")
    x = torch.randn(2, 3, 9, 9)
    # the weight standardization is gone: the model now computes something else
    assert not torch.allclose(model[0](x), ref[0](x), atol=1e-3)


def test_hooks_and_parametrizations_are_not_dropped() -> None:
    from torch.nn.utils import parametrizations, parametrize

    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
    )
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    model[1].register_forward_pre_hook(lambda m, i: (i[0].flip(3),))
    parametrizations.weight_norm(model[2])
    ref = copy.deepcopy(model)
    report = convert(model, "symmetric", symmetry={"h": 2}, predicate=lambda n, m: True)
    assert not report
    skipped = dict(report.skipped)
    assert skipped["0"].startswith("has forward hooks, which the replacement would not")
    assert skipped["1"].startswith("has forward pre-hooks")
    assert skipped["2"].startswith("parametrized (weight): the replacement would not carry")
    assert parametrize.is_parametrized(model[2])
    x = torch.randn(1, 2, 5, 6)
    torch.testing.assert_close(model(x), ref(x))


@pytest.mark.parametrize("name", ["include_degenerate", "allow_subclasses"])
def test_bool_options_are_checked(name: str) -> None:
    with pytest.raises(TypeError, match=f"{name}=1 must be a bool"):
        convert(_model(), "symmetric", symmetry={"h": 2}, **{name: 1})


# -- deployment and tooling paths on converted models ------------------------------------------


def _converted(to: str) -> SmallResNet:
    model = _model()
    report = convert(
        model, to, **({"symmetry": {"hv": "50%", "h": 2}} if to == "symmetric" else {})
    )
    assert len(report) == 5
    return model


@pytest.mark.parametrize("to", ["symmetric", "twist"])
def test_jit_trace_saves_and_loads(to: str, tmp_path) -> None:
    model = _converted(to).eval()
    x = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace(model, (x,))
    path = tmp_path / "model.pt"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    x2 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x2), model(x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("to", ["symmetric", "twist"])
def test_torch_export(to: str) -> None:
    model = _converted(to).eval()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def _outputs_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return (out.detach(), x.grad, *(p.grad for p in model.parameters()))


@pytest.mark.parametrize("to", ["symmetric", "twist"])
@pytest.mark.parametrize("train", [False, True])
def test_fx_symbolic_trace_same_outputs_and_gradients(to: str, train: bool) -> None:
    model = _converted(to).double().train(train)
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ref = copy.deepcopy(model)  # batch norm statistics move in training mode: one step each
    got = _outputs_and_grads(graph, x)
    want = _outputs_and_grads(ref, x)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("to", ["symmetric", "twist"])
def test_torchvision_feature_extraction(to: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(6)
    model = torchvision.models.resnet18(num_classes=10).eval()
    kwargs = {"symmetry": {"hv": "25%"}} if to == "symmetric" else {}
    assert convert(model, to, **kwargs)
    extractor = create_feature_extractor(model, {"layer2": "mid", "fc": "logits"})
    x = torch.randn(1, 3, 64, 64)
    feats = extractor(x)
    torch.testing.assert_close(feats["logits"], model(x), rtol=1e-5, atol=1e-5)
    assert feats["mid"].shape == (1, 128, 8, 8)


def test_jit_script_raises_a_clear_error() -> None:
    model = _converted("symmetric")
    with pytest.raises(TypeError, match=r"torch.jit.script does not support SymmetricConv2d; "):
        torch.jit.script(model)


def test_readme_convert_example_runs_and_prints_its_report(capsys) -> None:
    """The README's "Converting a model" snippet runs as pasted and prints what it shows."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Converting a model in one call", 1)[1]
    code, shown = re.findall(r"```(?:python|text)\n(.*?)```", section, re.S)[:2]
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == shown.strip()


def test_symmetric_rotation_keys() -> None:
    """Rotation keys convert 2-D layers with square kernels; a 1x1 kernel is degenerate
    (every turn leaves it unchanged), a non-square one is skipped naming kernel_size."""
    from symconv.core.symmetric_conv import degenerate_keys

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, (1, 3)), nn.Conv2d(8, 8, 1)
    )
    report = convert(model, "symmetric", symmetry={"r": "50%"})
    assert [n for n, _, _ in report.converted] == ["0"]
    assert model[0].plan.spec_dict() == {"r": "50%"} and model[0].plan.n_symmetric == 4
    skipped = dict(report.skipped)
    assert "square for symmetry key 'r'" in skipped["1"] and "1x1 kernel" in skipped["2"]
    report = convert(nn.Sequential(nn.Conv2d(3, 16, 3)), "symmetric", symmetry="hr:50%,h:4")
    assert len(report) == 1
    kept, dropped = degenerate_keys({"r": 4, "hr": 8, "h": 2}, (1, 1))
    assert kept == {} and len(dropped) == 3 and "1x1 in the turned" in dropped[0]
    assert degenerate_keys({"r": 4, "hr": 8}, (3, 3)) == ({"r": 4, "hr": 8}, [])
    assert degenerate_keys({"r": 4}, (1, 3)) == ({"r": 4}, [])  # the layer names the shape
    assert degenerate_keys({"r": 4}, (1, 3, 3)) == ({"r": 4}, [])  # 3-D: make_plan names it
